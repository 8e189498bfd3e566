"""The local stack: the whole system on one machine, no AWS and no Docker (`visual-search dev`)."""
