//! WAL capture: messages written as logical decoding messages, read from a replication slot.

mod admin;
mod bad_input;
mod failures;
mod faults;
mod flow;
