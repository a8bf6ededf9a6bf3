"""What a cell needs and gives back: AST analysis, serialization, blob cache, RemoteRef."""
