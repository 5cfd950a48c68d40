"""What is copied: an image's formats, compression frames, block maps, manifests, partition table
and filesystems, where it comes from (a file, a pipe, a server) and the catalog of an images
directory. Nothing here writes a disk."""
