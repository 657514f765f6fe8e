//! The `gannet` command.

fn main() {
    eprintln!("gannet: the server and command line arrive with the next milestones; see README.md");
    std::process::exit(2);
}
