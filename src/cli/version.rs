pub(super) fn run() -> anyhow::Result<()> {
    println!("{}", crate::version::long());
    Ok(())
}
