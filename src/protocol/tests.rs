//! Unit tests for the wire layer: round trips, one regression test per codec defect, and a
//! deterministic fuzz run proving no input makes `decode` panic.
