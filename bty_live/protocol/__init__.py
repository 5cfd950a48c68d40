"""What the PXE agent and `bty serve` say to each other (`wire`: the JSON messages, shared by both
ends) and the HTTP connection the agent and the image streamer use (`httpconn`)."""
