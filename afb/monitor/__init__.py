"""What the daemons tell about themselves: counters, snapshots, the control socket."""
