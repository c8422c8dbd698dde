//! `outbox-relay`: see `outbox-relay --help`.

fn main() -> std::process::ExitCode {
    outbox_relay::main()
}
