//! WAL capture: messages written as logical decoding messages, read from a replication slot.

mod flow;
