//! `answer`: see `answer --help` and [`voxmesh::cli::answer`].

fn main() -> std::process::ExitCode {
    voxmesh::cli::answer::main()
}
