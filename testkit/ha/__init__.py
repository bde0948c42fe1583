"""Fault injection on the local HA cluster: drills, the nemesis, its faults, proxies and history check."""
