"""The contract between client, broker and worker: gpucell.proto and the frames beside it (docs/protocol.md)."""

# Raised whenever gpucell.proto or a frame in docs/protocol.md changes in a way an older peer cannot read.
# Workers send it when they register; the broker refuses one that speaks another version.
PROTOCOL_VERSION = 2
