"""
The LAN cache: a content-addressed store of blobs and manifests on disk, the
index of which repository each was fetched through, and the fills that share
one upstream download among every client that asks at once.
"""
