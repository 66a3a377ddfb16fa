//! Writes the seed corpus of the `decoder` target: one file per seed, in the
//! directory given as the first argument (default `corpus/decoder`).
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/corpus/decoder
//! ```

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus/decoder".to_owned()));
    std::fs::create_dir_all(&dir)?;
    let seeds = cwp_fuzz::seeds();
    for (name, seed) in &seeds {
        std::fs::write(dir.join(format!("seed-{name}")), seed)?;
    }
    println!("wrote {} seeds to {}", seeds.len(), dir.display());
    Ok(())
}
