//! `tessera conformance`: runs ONNX backend test cases and model cases.

#[derive(clap::Args, Debug)]
pub struct ConformanceArgs {}

pub fn run(_args: &ConformanceArgs) -> Result<i32, String> {
    Err("conformance runner not written yet".into())
}
