//! `natprobe`: see `natprobe --help` and [`voxmesh::cli::natprobe`].

fn main() -> std::process::ExitCode {
    voxmesh::cli::natprobe::main()
}
