//! `relayd`: see `relayd --help` and [`voxmesh::cli::relayd`].

fn main() -> std::process::ExitCode {
    voxmesh::cli::relayd::main()
}
