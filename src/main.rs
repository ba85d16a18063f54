fn main() -> std::process::ExitCode {
    genfs::cli::main()
}
