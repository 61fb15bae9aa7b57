//! `supernoded`: see `supernoded --help` and [`voxmesh::cli::supernoded`].

fn main() -> std::process::ExitCode {
    voxmesh::cli::supernoded::main()
}
