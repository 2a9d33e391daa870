//! `chrysalis`: the command-line client.

fn main() {
    eprintln!("chrysalis: no subcommands yet");
    std::process::exit(2);
}
