//! `kodev dev`: first build, then watch and rebuild what each change touches.

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub common: crate::cli::CommonArgs,
}

pub async fn run(_args: DevArgs) -> crate::error::Result<i32> {
    Err(crate::error::KodevError::Usage("kodev dev is not available yet".into()))
}
