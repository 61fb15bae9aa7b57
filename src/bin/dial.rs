//! `dial`: see `dial --help` and [`voxmesh::cli::dial`].

fn main() -> std::process::ExitCode {
    voxmesh::cli::dial::main()
}
