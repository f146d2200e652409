//! The key-value daemon; see [`handoff_demo::kvd`].

fn main() {
    std::process::exit(handoff_demo::kvd::main_with_args(
        std::env::args().collect(),
    ));
}
