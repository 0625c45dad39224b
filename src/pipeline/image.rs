//! Composing ko's image from a base: the base plus appended layers plus an edited config.
//! Pure functions over values; nothing here touches the network or the disk.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::base::{BaseImage, BasePlatformImage, Blob, MediaFamily};
use super::layer::{sha256_digest, Layer, LayerKind, APP_DIR, KODATA_ROOT};
use crate::platform::Platform;

pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
pub const DEBUG_LABEL: &str = "dev.kodev.debug";
pub const AUTHOR: &str = "kodev";

/// A single-platform image ready to publish.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    pub platform: Platform,
    pub platform_json: Value,
    pub media_type: String,
    pub bytes: Bytes,
    pub digest: String,
    pub config: Blob,
    pub layers: Vec<(LayerKind, Blob)>,
}

/// What a build produces: one image, or an index of several.
#[derive(Debug, Clone)]
pub enum BuiltImage {
    Single(Box<ImageManifest>),
    Index { media_type: String, bytes: Bytes, digest: String, manifests: Vec<ImageManifest> },
}

impl BuiltImage {
    pub fn digest(&self) -> &str {
        match self {
            BuiltImage::Single(m) => &m.digest,
            BuiltImage::Index { digest, .. } => digest,
        }
    }
    pub fn media_type(&self) -> &str {
        match self {
            BuiltImage::Single(m) => &m.media_type,
            BuiltImage::Index { media_type, .. } => media_type,
        }
    }
    pub fn bytes(&self) -> &Bytes {
        match self {
            BuiltImage::Single(m) => &m.bytes,
            BuiltImage::Index { bytes, .. } => bytes,
        }
    }
    pub fn manifests(&self) -> &[ImageManifest] {
        match self {
            BuiltImage::Single(m) => std::slice::from_ref(m.as_ref()),
            BuiltImage::Index { manifests, .. } => manifests,
        }
    }
}

/// What ko changes in the config, besides the layers.
#[derive(Debug, Clone, Default)]
pub struct ConfigEdits {
    pub binary_name: String,
    pub import_path: String,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 `created`; `None` keeps the base's.
    pub created: Option<String>,
    pub debug: bool,
}

/// RFC 3339 time of a Unix epoch second.
pub fn rfc3339(epoch: u64) -> String {
    chrono::DateTime::from_timestamp(epoch as i64, 0).unwrap_or_default().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn obj(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut().expect("just made an object")
}

/// The base config kept as is (unknown fields too), with ko's edits; `layers` are the kind
/// and diff ID of each layer added to the base.
pub fn edit_config(base: &Value, layers: &[(LayerKind, String)], edits: &ConfigEdits) -> Value {
    let mut config = base.clone();
    let root = obj(&mut config);
    let created = edits
        .created
        .clone()
        .or_else(|| root.get("created").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| rfc3339(0));
    root.insert("created".into(), json!(created));
    root.insert("author".into(), json!(AUTHOR));

    let inner = obj(root.entry("config").or_insert_with(|| json!({})));
    inner.insert("Entrypoint".into(), json!([format!("{APP_DIR}/{}", edits.binary_name)]));
    inner.remove("Cmd");
    let mut env: Vec<String> = inner
        .get("Env")
        .and_then(Value::as_array)
        .map(|e| e.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    match env.iter_mut().find(|e| e.starts_with("PATH=")) {
        Some(path) => path.push_str(&format!(":{APP_DIR}")),
        None => env.push(format!("PATH={APP_DIR}")),
    }
    env.retain(|e| !e.starts_with("KO_DATA_PATH="));
    env.push(format!("KO_DATA_PATH={KODATA_ROOT}"));
    inner.insert("Env".into(), json!(env));
    let mut labels = edits.labels.clone();
    if edits.debug {
        labels.insert(DEBUG_LABEL.to_string(), "true".to_string());
    }
    if !labels.is_empty() {
        let existing = obj(inner.entry("Labels").or_insert_with(|| json!({})));
        for (k, v) in labels {
            existing.insert(k, json!(v));
        }
    }

    let history = root.entry("history").or_insert_with(|| json!([]));
    if let Some(history) = history.as_array_mut() {
        for (kind, _) in layers {
            let comment = match kind {
                LayerKind::Kodata => "kodata contents, at $KO_DATA_PATH".to_string(),
                _ => format!("go build output, at {APP_DIR}/{}", edits.binary_name),
            };
            history.push(json!({
                "author": AUTHOR,
                "created": created,
                "created_by": format!("kodev build ko://{}", edits.import_path),
                "comment": comment,
            }));
        }
    }
    let rootfs = obj(root.entry("rootfs").or_insert_with(|| json!({"type": "layers"})));
    rootfs.insert("type".into(), json!("layers"));
    let diff_ids = rootfs.entry("diff_ids").or_insert_with(|| json!([]));
    if let Some(ids) = diff_ids.as_array_mut() {
        ids.extend(layers.iter().map(|(_, diff_id)| json!(diff_id)));
    } else {
        *diff_ids = json!(layers.iter().map(|(_, diff_id)| diff_id.clone()).collect::<Vec<_>>());
    }
    config
}

/// The image config blob: the base's config with ko's edits (see [`edit_config`]).
pub fn config_blob(family: MediaFamily, base: &Value, layers: &[(LayerKind, String)], edits: &ConfigEdits) -> Blob {
    let config = edit_config(base, layers, edits);
    Blob::in_memory(family.config_type(), Bytes::from(serde_json::to_vec(&config).expect("JSON values serialize")))
}

/// One platform's image: base layers + kodata + binary, the edited config, and a manifest
/// of the base's media-type family carrying the base annotations.
pub fn compose_image(
    base: &BaseImage,
    base_image: &BasePlatformImage,
    layers: &[Layer],
    edits: &ConfigEdits,
) -> ImageManifest {
    let family = base.family;
    let diff_ids: Vec<_> = layers.iter().map(|l| (l.kind, l.diff_id.clone())).collect();
    let config_blob = config_blob(family, &base_image.config, &diff_ids, edits);

    let mut all_layers: Vec<(LayerKind, Blob)> =
        base_image.layers.iter().map(|b| (LayerKind::Base, b.clone())).collect();
    all_layers.extend(layers.iter().map(|l| (l.kind, Blob::from_layer(family.layer_type(), l))));

    let annotations = json!({
        ANNOTATION_BASE_DIGEST: base_image.manifest_digest,
        ANNOTATION_BASE_NAME: base.name,
    });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": family.manifest_type(),
        "config": config_blob.descriptor,
        "layers": all_layers.iter().map(|(_, b)| b.descriptor.clone()).collect::<Vec<_>>(),
        "annotations": annotations,
    });
    let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("JSON values serialize"));
    ImageManifest {
        platform: base_image.platform.clone(),
        platform_json: base_image.platform_json.clone(),
        media_type: family.manifest_type().to_string(),
        digest: sha256_digest(&bytes),
        bytes,
        config: config_blob,
        layers: all_layers,
    }
}

/// One image stays an image; several become an index in the base's order.
pub fn assemble(base: &BaseImage, mut images: Vec<ImageManifest>) -> BuiltImage {
    if images.len() == 1 {
        return BuiltImage::Single(Box::new(images.remove(0)));
    }
    let family: MediaFamily = base.family;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": family.index_type(),
        "manifests": images.iter().map(|m| json!({
            "mediaType": m.media_type,
            "digest": m.digest,
            "size": m.bytes.len(),
            "platform": m.platform_json,
        })).collect::<Vec<_>>(),
        "annotations": {
            ANNOTATION_BASE_DIGEST: base.digest,
            ANNOTATION_BASE_NAME: base.name,
        },
    });
    let bytes = Bytes::from(serde_json::to_vec(&index).expect("JSON values serialize"));
    BuiltImage::Index {
        media_type: family.index_type().to_string(),
        digest: sha256_digest(&bytes),
        bytes,
        manifests: images,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_edits_follow_ko() {
        let base = json!({
            "architecture": "amd64", "os": "linux", "created": "2020-01-01T00:00:00Z", "x-unknown": {"kept": true},
            "config": {"Env": ["PATH=/usr/bin", "A=b"], "Cmd": ["sh"], "User": "65532", "Labels": {"base": "yes"}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]}, "history": [{"created_by": "base"}]
        });
        let layer = (LayerKind::Binary, "sha256:dd".to_string());
        let edits = ConfigEdits {
            binary_name: "hello".into(),
            import_path: "example.com/hello".into(),
            labels: [("team".to_string(), "x".to_string())].into(),
            created: Some(rfc3339(1_700_000_000)),
            debug: true,
        };
        let out = edit_config(&base, &[layer], &edits);
        assert_eq!(out["x-unknown"]["kept"], true);
        assert_eq!(out["config"]["Entrypoint"], json!(["/ko-app/hello"]));
        assert!(out["config"].get("Cmd").is_none());
        assert_eq!(out["config"]["Env"], json!(["PATH=/usr/bin:/ko-app", "A=b", "KO_DATA_PATH=/var/run/ko"]));
        assert_eq!(out["config"]["User"], "65532");
        assert_eq!(out["config"]["Labels"], json!({"base": "yes", "team": "x", "dev.kodev.debug": "true"}));
        assert_eq!(out["rootfs"]["diff_ids"], json!(["sha256:aa", "sha256:dd"]));
        assert_eq!(out["history"].as_array().unwrap().len(), 2);
        assert_eq!(out["created"], "2023-11-14T22:13:20Z");
    }
}
