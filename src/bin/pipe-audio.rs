//! `pipe-audio`: see `pipe-audio --help` and [`voxmesh::cli::pipe_audio`].

fn main() -> std::process::ExitCode {
    voxmesh::cli::pipe_audio::main()
}
