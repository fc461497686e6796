//! Models by Hugging Face Hub id (`FacebookAI/roberta-base`, `google-t5/t5-base`), resolved
//! through the standard Hugging Face cache with the `hf-hub` crate, as Candle's own examples
//! do.
//!
//! [`resolve_model`] turns what a user wrote after `--model` / `--model-dir` (or `model_dir =`
//! in a run's TOML) into a folder holding `config.json`, `model.safetensors` and, when the
//! repository has one, `tokenizer.json`:
//!
//! - a string naming an existing path is always that local folder, untouched;
//! - otherwise a Hub id (`org/name`, a legacy `name`, optionally `@revision`) is looked up in
//!   the cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
//!   else `~/.cache/huggingface/hub`; layout `models--org--name/{refs,snapshots,blobs}`);
//!   when it is cached nothing touches the network;
//! - when it is not cached it is downloaded into that cache (honouring `HF_ENDPOINT`,
//!   `HF_TOKEN` or the cache's token file), unless `HF_HUB_OFFLINE=1`: then, or when the Hub is
//!   unreachable, the error names the id, the cache folder searched and how to fix it.
//!
//! It runs before any other work of a command.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Files a model folder must hold.
pub const REQUIRED_FILES: [&str; 2] = ["config.json", "model.safetensors"];
/// Files fetched too when the repository has them.
pub const OPTIONAL_FILES: [&str; 1] = ["tokenizer.json"];

/// Where and how models are looked up; [`HubSettings::from_env`] reads the standard Hugging
/// Face environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub cache folder (the one holding `models--org--name`).
    pub cache_dir: PathBuf,
    /// Never touch the network (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// The Hub's address (`HF_ENDPOINT`; default `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// An access token for gated or private models (`HF_TOKEN`, else the cache's token file).
    pub token: Option<String>,
    /// Draw download progress bars (on stderr).
    pub progress: bool,
}

/// Whether a flag such as `HF_HUB_OFFLINE` holds a true value (`1`, `ON`, `YES`, `TRUE`, any
/// case), as `huggingface_hub` reads it.
fn is_true(value: Option<String>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

impl HubSettings {
    /// The settings `huggingface_hub` would use: cache folder from `HF_HUB_CACHE` (or the
    /// older `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, else
    /// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; offline when
    /// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is true; `HF_ENDPOINT`; `HF_TOKEN` or the
    /// token file beside the cache (`HF_HOME/token`).
    pub fn from_env() -> Self {
        Self::from_vars(&|name| std::env::var(name).ok())
    }

    /// [`HubSettings::from_env`] over any source of variables (`get("HF_HOME")`), e.g. a
    /// map in tests.
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Self {
        let path = |name: &str| get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let hf_home = path("HF_HOME")
            .or_else(|| path("XDG_CACHE_HOME").map(|d| d.join("huggingface")))
            .unwrap_or_else(|| {
                // hf-hub's default: ~/.cache/huggingface/hub
                hf_hub::Cache::default()
                    .path()
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from(".cache/huggingface"))
            });
        let cache_dir = path("HF_HUB_CACHE")
            .or_else(|| path("HUGGINGFACE_HUB_CACHE"))
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = get("HF_TOKEN")
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .or_else(|| {
                std::fs::read_to_string(hf_home.join("token"))
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        Self {
            cache_dir,
            offline: is_true(get("HF_HUB_OFFLINE")) || is_true(get("TRANSFORMERS_OFFLINE")),
            endpoint: get("HF_ENDPOINT").filter(|e| !e.is_empty()),
            token,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

/// A Hub model id: `org/name` or a legacy `name`, and a revision (`main` unless `@rev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// Branch, tag or commit.
    pub revision: String,
}

impl HubId {
    /// Parse `org/name[@revision]` by the Hub's naming rules (letters, digits, `-`, `_`, `.`;
    /// no `--` or `..`; at most 96 characters per part); `None` when `spec` cannot be an id.
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) if !rev.is_empty() && !rev.contains(['@', ' ', '\\']) => (r, rev),
            Some(_) => return None,
            None => (spec, "main"),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() > 2 {
            return None;
        }
        let ok = |p: &str| {
            (1..=96).contains(&p.len())
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && p.starts_with(|c: char| c.is_ascii_alphanumeric())
                && !p.ends_with('.')
                && !p.contains("--")
                && !p.contains("..")
        };
        parts.iter().all(|p| ok(p)).then(|| Self {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    /// The cache folder of this model: `<cache>/models--org--name`.
    pub fn cache_folder(&self, cache_dir: &Path) -> PathBuf {
        cache_dir.join(self.hf_repo().folder_name())
    }

    /// The cache folder of this dataset: `<cache>/datasets--org--name`.
    pub fn dataset_cache_folder(&self, cache_dir: &Path) -> PathBuf {
        cache_dir.join(self.hf_dataset().folder_name())
    }

    fn hf_repo(&self) -> hf_hub::Repo {
        hf_hub::Repo::with_revision(
            self.repo.clone(),
            hf_hub::RepoType::Model,
            self.revision.clone(),
        )
    }

    fn hf_dataset(&self) -> hf_hub::Repo {
        hf_hub::Repo::with_revision(
            self.repo.clone(),
            hf_hub::RepoType::Dataset,
            self.revision.clone(),
        )
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.revision == "main" {
            write!(f, "{}", self.repo)
        } else {
            write!(f, "{}@{}", self.repo, self.revision)
        }
    }
}

/// The model folder `spec` names: an existing local path as is, otherwise a Hub id resolved
/// through the Hugging Face cache (downloading unless offline), with the settings of
/// [`HubSettings::from_env`]. See the module documentation.
pub fn resolve_model(spec: impl AsRef<Path>) -> Result<PathBuf> {
    let spec = spec.as_ref();
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    resolve_model_with(spec, &HubSettings::from_env())
}

/// [`resolve_model`] with explicit settings.
pub fn resolve_model_with(spec: &Path, settings: &HubSettings) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    let Some(id) = spec.to_str().and_then(HubId::parse) else {
        bail!(
            "model folder {} does not exist (a model is a folder with config.json, \
             model.safetensors and tokenizer.json, or a Hugging Face Hub id such as \
             `FacebookAI/roberta-base`)",
            spec.display()
        );
    };
    let folder = id.cache_folder(&settings.cache_dir);
    let cached = match cached_snapshot(&id, &settings.cache_dir) {
        // a cached model without its tokenizer (another client fetched only some files):
        // online, complete it when the repository has one; otherwise, or when that fails,
        // the snapshot as it is
        Ok(dir) if !settings.offline && !OPTIONAL_FILES.iter().all(|f| dir.join(f).is_file()) => {
            return Ok(download(&id, settings).unwrap_or(dir))
        }
        Ok(dir) => return Ok(dir),
        Err(why) => why,
    };
    let fix = format!(
        "To fix: download it where the Hub is reachable (`huggingface-cli download {id}`, or \
         run this command once with network access), point HF_HUB_CACHE or HF_HOME at a cache \
         that holds it, or pass a local folder with {}, {} and {}",
        REQUIRED_FILES[0], REQUIRED_FILES[1], OPTIONAL_FILES[0]
    );
    if settings.offline {
        bail!(
            "`{id}` is not a local folder and the Hugging Face cache does not hold it \
             (searched {}: {cached}); HF_HUB_OFFLINE is set, so it cannot be downloaded. {fix}",
            folder.display()
        );
    }
    download(&id, settings).map_err(|e| {
        anyhow::anyhow!(
            "`{id}` is not a local folder and the Hugging Face cache does not hold it \
             (searched {}: {cached}), and fetching it from {} failed: {e}. {fix}",
            folder.display(),
            settings
                .endpoint
                .as_deref()
                .unwrap_or("https://huggingface.co")
        )
    })
}

/// The snapshot folder of `id` in the cache when it holds every required file (and every
/// optional file the snapshot lists), or why not, in words.
pub fn cached_snapshot(id: &HubId, cache_dir: &Path) -> Result<PathBuf, String> {
    let folder = id.cache_folder(cache_dir);
    if !folder.is_dir() {
        return Err(format!("no folder {}", folder.display()));
    }
    let cache = hf_hub::Cache::new(cache_dir.to_path_buf());
    let repo = cache.repo(id.hf_repo());
    let snapshot = match repo.get(REQUIRED_FILES[0]) {
        Some(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
        // the ref exists but the snapshot lacks config.json, or the revision is a commit
        None => snapshot_folder(&folder, &id.revision)?,
    };
    let missing: Vec<&str> = REQUIRED_FILES
        .iter()
        .copied()
        .filter(|f| !snapshot.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "snapshot {} lacks {}",
            snapshot.display(),
            missing.join(" and ")
        ));
    }
    Ok(snapshot)
}

/// The snapshot of `revision` in a repository's cache folder: through `refs/<revision>` (a
/// branch or tag; the commit, surrounding whitespace ignored) or `snapshots/<revision>` (a
/// commit, which the Python client stores without a ref).
fn snapshot_folder(folder: &Path, revision: &str) -> Result<PathBuf, String> {
    if !folder.is_dir() {
        return Err(format!("no folder {}", folder.display()));
    }
    let by_ref = std::fs::read_to_string(folder.join("refs").join(revision))
        .ok()
        .map(|c| folder.join("snapshots").join(c.trim()));
    let by_commit = folder.join("snapshots").join(revision);
    by_ref
        .or_else(|| by_commit.is_dir().then_some(by_commit))
        .ok_or_else(|| format!("no refs/{revision} and no snapshots/{revision}"))
}

/// The sync API over the settings' cache, endpoint and token.
fn api(settings: &HubSettings) -> Result<hf_hub::api::sync::Api> {
    let mut builder =
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(settings.cache_dir.clone()))
            .with_progress(settings.progress)
            .with_token(settings.token.clone());
    if let Some(e) = &settings.endpoint {
        builder = builder.with_endpoint(e.clone());
    }
    Ok(builder.build()?)
}

/// Download the model files of `id` into the cache; the snapshot folder.
fn download(id: &HubId, settings: &HubSettings) -> Result<PathBuf> {
    let repo = api(settings)?.repo(id.hf_repo());
    let info = repo.info()?;
    let listed = |f: &str| info.siblings.iter().any(|s| s.rfilename == f);
    for f in REQUIRED_FILES {
        if !listed(f) {
            let hint = if f == "model.safetensors" && listed("pytorch_model.bin") {
                " (it has PyTorch `pytorch_model.bin` weights only; propetl reads safetensors)"
            } else if f == "model.safetensors" && listed("model.safetensors.index.json") {
                " (its weights are sharded; propetl reads one model.safetensors)"
            } else {
                ""
            };
            bail!("the Hub repository {id} has no {f}{hint}");
        }
    }
    let mut snapshot = None;
    for f in REQUIRED_FILES
        .into_iter()
        .chain(OPTIONAL_FILES.into_iter().filter(|f| listed(f)))
    {
        let path = repo.get(f)?;
        snapshot.get_or_insert_with(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    Ok(snapshot.unwrap_or_default())
}

/// Whether `name` (a path in a repository) is a parquet file of `prefix`: `<prefix>.parquet`
/// or a shard `<prefix>-….parquet` (`sst2/train` matches `sst2/train-00000-of-00001.parquet`).
pub fn is_parquet_of(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|rest| {
        rest == ".parquet" || rest.starts_with('-') && rest.ends_with(".parquet")
    })
}

/// A Hub dataset id: `org/name[@revision]` (a legacy one-part name is not taken for a
/// dataset, so a missing local folder such as `glue` stays a missing folder).
pub fn dataset_id(spec: &Path) -> Option<HubId> {
    spec.to_str()
        .filter(|s| s.split('@').next().is_some_and(|r| r.contains('/')))
        .and_then(HubId::parse)
}

/// The folder of a dataset `spec` names: an existing local path as is; otherwise a Hub
/// dataset id (`nyu-mll/glue`) resolved through the Hugging Face cache to its snapshot
/// folder, which must hold at least one parquet file of every prefix of `needed` (`sst2/train`:
/// `sst2/train-*.parquet`); what is missing is downloaded unless offline. Settings of
/// [`HubSettings::from_env`].
pub fn resolve_dataset(spec: &Path, needed: &[&str]) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    resolve_dataset_with(spec, needed, &HubSettings::from_env())
}

/// [`resolve_dataset`] with explicit settings.
pub fn resolve_dataset_with(
    spec: &Path,
    needed: &[&str],
    settings: &HubSettings,
) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    let Some(id) = dataset_id(spec) else {
        bail!(
            "data folder {} does not exist (and it is not a Hugging Face Hub dataset id such \
             as `nyu-mll/glue`)",
            spec.display()
        );
    };
    let folder = id.dataset_cache_folder(&settings.cache_dir);
    let wanted = needed
        .iter()
        .map(|p| format!("{p}-*.parquet"))
        .collect::<Vec<_>>()
        .join(", ");
    let cached = match snapshot_folder(&folder, &id.revision).and_then(|snapshot| {
        let missing: Vec<&str> = needed
            .iter()
            .copied()
            .filter(|p| {
                let (dir, _) = p.rsplit_once('/').unwrap_or(("", p));
                let listing = std::fs::read_dir(snapshot.join(dir)).into_iter().flatten();
                !listing.flatten().any(|e| {
                    let name = format!(
                        "{dir}{}{}",
                        if dir.is_empty() { "" } else { "/" },
                        e.file_name().to_string_lossy()
                    );
                    is_parquet_of(&name, p)
                })
            })
            .collect();
        if missing.is_empty() {
            Ok(snapshot)
        } else {
            Err(format!(
                "snapshot {} has no {}-*.parquet",
                snapshot.display(),
                missing.join("-*.parquet, no ")
            ))
        }
    }) {
        Ok(snapshot) => return Ok(snapshot),
        Err(why) => why,
    };
    let include = needed
        .iter()
        .map(|p| format!(" --include '{p}*.parquet'"))
        .collect::<String>();
    let fix = format!(
        "To fix: download it where the Hub is reachable (`huggingface-cli download {} \
         --repo-type dataset{include}`, or run this command once with network access), point \
         HF_HUB_CACHE or HF_HOME at a cache that holds it, or pass a local folder",
        id.repo
    );
    if settings.offline {
        bail!(
            "`{id}` is not a local folder and the Hugging Face cache does not hold the \
             dataset's {wanted} (searched {}: {cached}); HF_HUB_OFFLINE is set, so it cannot \
             be downloaded. {fix}",
            folder.display()
        );
    }
    download_dataset(&id, needed, settings).map_err(|e| {
        anyhow::anyhow!(
            "`{id}` is not a local folder and the Hugging Face cache does not hold the \
             dataset's {wanted} (searched {}: {cached}), and fetching them from {} failed: \
             {e}. {fix}",
            folder.display(),
            settings
                .endpoint
                .as_deref()
                .unwrap_or("https://huggingface.co")
        )
    })
}

/// Download the parquet files of every prefix of `needed` of the dataset `id`; the
/// snapshot folder.
fn download_dataset(id: &HubId, needed: &[&str], settings: &HubSettings) -> Result<PathBuf> {
    let repo = api(settings)?.repo(id.hf_dataset());
    let info = repo.info()?;
    let mut snapshot = None;
    for p in needed {
        let files: Vec<&str> = info
            .siblings
            .iter()
            .map(|s| s.rfilename.as_str())
            .filter(|f| is_parquet_of(f, p))
            .collect();
        if files.is_empty() {
            bail!("the Hub dataset {id} has no {p}-*.parquet");
        }
        for f in files {
            let path = repo.get(f)?;
            // <snapshot>/<dir>/<file>: one level per path component of `f`
            let mut root = path.clone();
            for _ in 0..f.split('/').count() {
                root.pop();
            }
            snapshot.get_or_insert(root);
        }
    }
    Ok(snapshot.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_hugging_face_variables() {
        let from = |vars: &[(&str, &str)]| {
            let vars: std::collections::HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            HubSettings::from_vars(&move |k| vars.get(k).cloned())
        };
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("token"), "hf_file\n").unwrap();
        let h = home.path().to_str().unwrap();
        // HF_HUB_CACHE > HUGGINGFACE_HUB_CACHE > HF_HOME/hub > XDG_CACHE_HOME/huggingface/hub
        let s = from(&[
            ("HF_HUB_CACHE", "/a"),
            ("HUGGINGFACE_HUB_CACHE", "/b"),
            ("HF_HOME", h),
        ]);
        assert_eq!(s.cache_dir, PathBuf::from("/a"));
        let s = from(&[("HUGGINGFACE_HUB_CACHE", "/b"), ("HF_HOME", h)]);
        assert_eq!(s.cache_dir, PathBuf::from("/b"));
        let s = from(&[("HF_HOME", h), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(s.cache_dir, home.path().join("hub"));
        // the token file beside the cache, unless HF_TOKEN
        assert_eq!(s.token.as_deref(), Some("hf_file"));
        let s = from(&[("HF_HOME", h), ("HF_TOKEN", "hf_env")]);
        assert_eq!(s.token.as_deref(), Some("hf_env"));
        let s = from(&[("XDG_CACHE_HOME", "/x")]);
        assert_eq!(s.cache_dir, PathBuf::from("/x/huggingface/hub"));
        assert!(from(&[]).cache_dir.ends_with(".cache/huggingface/hub"));
        // offline flags as huggingface_hub reads them
        for (v, offline) in [("1", true), ("ON", true), ("yes", true), ("True", true)] {
            assert_eq!(from(&[("HF_HUB_OFFLINE", v)]).offline, offline, "{v}");
        }
        for v in ["0", "", "false", "off"] {
            assert!(!from(&[("HF_HUB_OFFLINE", v)]).offline, "{v}");
        }
        assert!(from(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
        assert_eq!(
            from(&[("HF_ENDPOINT", "http://mirror")])
                .endpoint
                .as_deref(),
            Some("http://mirror")
        );
    }

    #[test]
    fn hub_ids_parse_by_the_hub_rules() {
        let id = HubId::parse("FacebookAI/roberta-base").unwrap();
        assert_eq!(id.repo, "FacebookAI/roberta-base");
        assert_eq!(id.revision, "main");
        let id = HubId::parse("google-t5/t5-base@v1.0").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision.as_str()),
            ("google-t5/t5-base", "v1.0")
        );
        assert_eq!(id.to_string(), "google-t5/t5-base@v1.0");
        assert!(HubId::parse("roberta-base").is_some());
        assert!(dataset_id(Path::new("nyu-mll/glue")).is_some());
        assert!(dataset_id(Path::new("glue")).is_none());
        assert!(is_parquet_of(
            "sst2/train-00000-of-00001.parquet",
            "sst2/train"
        ));
        assert!(is_parquet_of("sst2/train.parquet", "sst2/train"));
        assert!(!is_parquet_of(
            "mnli/validation_mismatched-0.parquet",
            "mnli/validation_matched"
        ));
        assert!(!is_parquet_of("sst2/trainer-0.json", "sst2/train"));
        for bad in [
            "tests/fixtures/tiny-roberta",
            "/abs/path",
            "./rel",
            "../up/x",
            "a--b/c",
            "org/na..me",
            "org/",
            "org/name@",
            "with space/x",
            "",
        ] {
            assert!(HubId::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(
            HubId::parse("FacebookAI/roberta-base")
                .unwrap()
                .cache_folder(Path::new("/c")),
            PathBuf::from("/c/models--FacebookAI--roberta-base")
        );
    }
}
