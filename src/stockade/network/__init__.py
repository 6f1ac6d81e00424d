"""Container networking: bridges and veths (links), address management (store), nftables
(firewall), published ports (ports), a DNS responder per user-defined network (dns), and the
per-container sequence that ties them together (endpoints). Knows nothing of the engine's
container directories: it is given IDs, names and a network namespace."""
