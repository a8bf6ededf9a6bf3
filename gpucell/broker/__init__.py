"""The broker: gRPC server with sessions, the scheduler, pools and provisioners."""
