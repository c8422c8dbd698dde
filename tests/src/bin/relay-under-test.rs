//! The `outbox-relay` program, built inside the test package so that end-to-end tests can start,
//! kill and restart it as a real child process.

fn main() -> std::process::ExitCode {
    outbox_relay::main()
}
