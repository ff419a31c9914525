//! Writes files the way kubelet's atomic writer updates a Secret volume (docs/kubelet-volumes.md):
//! a new `..YYYY_MM_DD_HH_MM_SS.N` directory, files inside it, a `..data_tmp` symlink renamed
//! onto `..data` (the commit point), top-level symlinks for new keys, then the old directory
//! removed. Readers that resolve `..data` once always see a complete generation. Used by the
//! demo (its volumes) and by `watch --stage-dir` (the validated triple for the app).

use std::io;
use std::io::Write;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use time::OffsetDateTime;

/// Publishes `files` as the volume's next generation, every file mode 0644.
pub fn write_generation(dir: &Path, files: &[(&str, &[u8])]) -> io::Result<()> {
    let with_modes: Vec<(&str, &[u8], u32)> = files.iter().map(|(n, b)| (*n, *b, 0o644)).collect();
    write_generation_with_modes(dir, &with_modes)
}

/// Publishes `files` (name, content, mode) as the volume's next generation.
pub fn write_generation_with_modes(dir: &Path, files: &[(&str, &[u8], u32)]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join("..data");
    let old = std::fs::read_link(&data).ok();
    let now = OffsetDateTime::now_utc();
    let ts = format!(
        "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond()
    );
    let gen_dir = dir.join(&ts);
    std::fs::create_dir(&gen_dir)?;
    std::fs::set_permissions(&gen_dir, std::fs::Permissions::from_mode(0o755))?;
    for (name, bytes, mode) in files {
        let p = gen_dir.join(name);
        // Create with the final mode, so a key is never readable by others even for a moment.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(&p)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    for (name, _, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link)?;
        }
    }
    // Only ever remove a generation directory of this volume (a relative `..name`).
    if let Some(old) = old {
        let ours = old.components().count() == 1 && old.to_string_lossy().starts_with("..");
        if ours && old != Path::new(&ts) {
            std::fs::remove_dir_all(dir.join(old))?;
        }
    }
    Ok(())
}
