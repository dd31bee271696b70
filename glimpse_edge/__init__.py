"""glimpse-edge: a device agent that joins a Glimpse video room, unattended."""

__version__ = "0.1.0"
