//! Writes files the way kubelet's atomic writer updates a Secret volume (../shared/KUBELET.md):
//! a new `..YYYY_MM_DD_HH_MM_SS.N` directory, files inside it, a `..data_tmp` symlink renamed
//! onto `..data` (the commit point), top-level symlinks for new keys, then the old directory
//! removed. The demo uses it to make (and later rotate) its volumes.

use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use time::OffsetDateTime;

/// Publishes `files` as the volume's next generation.
pub fn write_generation(dir: &Path, files: &[(&str, &[u8])]) -> io::Result<()> {
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
    for (name, bytes) in files {
        let p = gen_dir.join(name);
        std::fs::write(&p, bytes)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link)?;
        }
    }
    if let Some(old) = old {
        if old != Path::new(&ts) {
            std::fs::remove_dir_all(dir.join(old))?;
        }
    }
    Ok(())
}
