//! README's flag reference is the binary's own `--help`, verbatim, one block per subcommand
//! between `<!-- help: SUBCOMMAND -->` and `<!-- /help -->`. This test fails when a block and the
//! binary differ, showing the block to paste; `UPDATE_README=1 cargo test readme_flags` rewrites
//! README.md itself.

use std::path::PathBuf;

use crate::support::bin_command;

/// Every subcommand that has a reference block (`mtls-sidecar` is the top level).
const BLOCKS: [&str; 8] = [
    "mtls-sidecar",
    "check",
    "server",
    "client",
    "watch",
    "run",
    "drain",
    "demo",
];

fn readme() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md")
}

/// `mtls-sidecar [SUB] --help`, as a user sees it in an 100-column terminal with none of our
/// environment variables set (clap shows their values otherwise).
fn help(block: &str) -> String {
    let mut cmd = bin_command();
    if block != "mtls-sidecar" {
        cmd.arg(block);
    }
    let out = cmd
        .arg("--help")
        .env("COLUMNS", "100")
        .output()
        .expect("run mtls-sidecar --help");
    assert!(out.status.success(), "{block} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

fn section(block: &str, help: &str) -> String {
    format!(
        "<!-- help: {block} -->\n```text\n{}\n```\n<!-- /help -->",
        help.trim_end()
    )
}

/// The byte range of `block`'s section in `text`, markers included.
fn find(text: &str, block: &str) -> Option<std::ops::Range<usize>> {
    let start = text.find(&format!("<!-- help: {block} -->"))?;
    let end = start + text[start..].find("<!-- /help -->")? + "<!-- /help -->".len();
    Some(start..end)
}

#[test]
fn readme_flag_reference_is_the_binarys_help() {
    let path = readme();
    let mut text = std::fs::read_to_string(&path).expect("read README.md");
    let update = std::env::var_os("UPDATE_README").is_some();
    let mut stale = Vec::new();
    for block in BLOCKS {
        let want = section(block, &help(block));
        match find(&text, block) {
            Some(range) if text[range.clone()] == want => {}
            Some(range) if update => text.replace_range(range, &want),
            Some(_) => stale.push(format!("README.md: the `{block}` block differs from the binary; it should be:\n\n{want}\n")),
            None => stale.push(format!(
                "README.md has no `<!-- help: {block} -->` block; add (in the flag reference):\n\n{want}\n"
            )),
        }
    }
    if update {
        std::fs::write(&path, text).expect("write README.md");
    }
    assert!(
        stale.is_empty(),
        "{}\n(or run `UPDATE_README=1 cargo test readme_flags`)",
        stale.join("\n")
    );
}
