//! The command line: `kodev build | dev | plan`. Parses flags, calls the library, maps errors to exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tokio::sync::mpsc;

use crate::config::{self, LoadOptions, Plan, PublishTarget};
use crate::error::{KodevError, Result};
use crate::event::EventSink;
use crate::headless::{self, OutputFormat};
use crate::pipeline::{gobuild, Builder};

#[derive(Debug, Parser)]
#[command(
    name = "kodev",
    version,
    about = "Build Go main packages into OCI images the way ko does, push them, and rebuild on change."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build every artifact once and push it (for CI).
    Build(BuildArgs),
    /// Build, then watch the sources and rebuild what each change touches.
    Dev(crate::dev::DevArgs),
    /// Show what would be built, building nothing.
    Plan(PlanArgs),
    /// Write a skaffold.yaml with one ko artifact per main package of the module.
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the config.
    #[arg(short = 'f', long = "filename", visible_alias = "file", default_value = "skaffold.yaml")]
    pub file: PathBuf,
}

/// Which config, profiles and names: the flags `build`, `dev` and `plan` share.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Path to skaffold.yaml.
    #[arg(
        short = 'f',
        long = "filename",
        visible_alias = "file",
        default_value = "skaffold.yaml",
        env = "SKAFFOLD_FILENAME"
    )]
    pub file: PathBuf,
    /// Default repository prepended to image names (else SKAFFOLD_DEFAULT_REPO, Skaffold's global config, KO_DOCKER_REPO).
    #[arg(short = 'd', long = "default-repo")]
    pub default_repo: Option<String>,
    /// Target platforms, os/arch[/variant], comma-separated or repeated; `all` for every platform of the base.
    #[arg(long = "platform", env = "SKAFFOLD_PLATFORM")]
    pub platforms: Vec<String>,
    /// Tag to use instead of the tag policy's.
    #[arg(short = 't', long, env = "SKAFFOLD_TAG")]
    pub tag: Option<String>,
    /// Keep the image path under the default repo instead of flattening it.
    #[arg(long = "multi-level-repo")]
    pub multi_level_repo: bool,
    /// Activate a profile of skaffold.yaml (repeatable, or comma-separated); `-NAME` turns off one its activation would turn on.
    #[arg(short = 'p', long = "profile", value_delimiter = ',', allow_hyphen_values = true, env = "SKAFFOLD_PROFILE")]
    pub profiles: Vec<String>,
    /// The Kubernetes context profiles' activation.kubeContext is matched against (default: kubeconfig's current one).
    #[arg(long = "kube-context", env = "SKAFFOLD_KUBE_CONTEXT")]
    pub kube_context: Option<String>,
    /// Skaffold's global config file (default ~/.skaffold/config).
    #[arg(short = 'c', long = "config", env = "SKAFFOLD_CONFIG")]
    pub global_config: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn load_options(&self, command: &str) -> LoadOptions {
        LoadOptions {
            file: self.file.clone(),
            command: command.to_string(),
            default_repo: self.default_repo.clone(),
            platforms: self.platforms.clone(),
            tag: self.tag.clone(),
            multi_level_repo: self.multi_level_repo,
            profiles: self.profiles.clone(),
            kube_context: self.kube_context.clone(),
            global_config: self.global_config.clone(),
            ..Default::default()
        }
    }
}

/// Flags shared by `build` and `dev`.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Push to the registry (`--push=false` writes an OCI layout instead).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true, env = "SKAFFOLD_PUSH")]
    pub push: Option<bool>,
    /// Write images into this OCI image layout directory instead of pushing.
    #[arg(long = "oci-layout")]
    pub oci_layout: Option<PathBuf>,
    /// Registries to reach over plain HTTP (loopback ones always are).
    #[arg(long = "insecure-registry", value_delimiter = ',', env = "SKAFFOLD_INSECURE_REGISTRY")]
    pub insecure_registries: Vec<String>,
    /// Build with optimizations disabled (-gcflags=all=-N -l) for debuggers.
    #[arg(long)]
    pub debug: bool,
    /// Only build these images (as written in skaffold.yaml).
    #[arg(short = 'b', long = "build-image", value_delimiter = ',', env = "SKAFFOLD_BUILD_IMAGE")]
    pub build_images: Vec<String>,
}

impl CommonArgs {
    pub fn load_options(&self, command: &str) -> LoadOptions {
        LoadOptions {
            push: self.push,
            oci_layout: self.oci_layout.clone(),
            insecure_registries: self.insecure_registries.clone(),
            build_images: self.build_images.clone(),
            ..self.config.load_options(command)
        }
    }
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Write the built references as Skaffold's build JSON.
    #[arg(long = "file-output", env = "SKAFFOLD_FILE_OUTPUT")]
    pub file_output: Option<PathBuf>,
    /// Build nothing: print each artifact's `name:tag` (and write --file-output with them), as `skaffold build --dry-run`.
    #[arg(long = "dry-run", env = "SKAFFOLD_DRY_RUN")]
    pub dry_run: bool,
    /// No progress on stderr (errors still): stdout gets the --output template's text, `{{json .}}` unless given.
    #[arg(short = 'q', long, env = "SKAFFOLD_QUIET")]
    pub quiet: bool,
    /// Go template for stdout over {Builds: [{ImageName, Tag}]}, as skaffold build's (functions json, join…).
    #[arg(short = 'o', long = "output", env = "SKAFFOLD_OUTPUT")]
    pub output: Option<String>,
}

/// What `kodev build` prints on stdout: one reference a line, or a template's text.
enum BuildReport {
    Lines,
    Template(config::template::Template),
}

impl BuildReport {
    /// From `-q` and `-o`: a template that cannot be read, or that fails on a build's data, is a
    /// usage error before anything is built.
    fn from_args(args: &BuildArgs) -> Result<BuildReport> {
        let text = match (&args.output, args.quiet) {
            (Some(text), _) => text.as_str(),
            (None, true) => "{{json .}}",
            (None, false) => return Ok(BuildReport::Lines),
        };
        let usage = |message: String| KodevError::Usage(format!("-o/--output: {message}"));
        let template = config::template::Template::parse(text).map_err(usage)?;
        template.render(&build_output_data(&[("image", "name:tag@sha256:digest".to_string())])).map_err(usage)?;
        Ok(BuildReport::Template(template))
    }

    fn print(&self, builds: &[(&str, String)]) -> Result<()> {
        match self {
            BuildReport::Lines => {
                for (_, reference) in builds {
                    println!("{reference}");
                }
            }
            BuildReport::Template(template) => {
                let text = template.render(&build_output_data(builds)).map_err(KodevError::Usage)?;
                if text.ends_with('\n') || text.is_empty() {
                    print!("{text}");
                } else {
                    println!("{text}");
                }
            }
        }
        Ok(())
    }
}

/// Skaffold's `BuildOutput` for templates: `Builds`, each with `ImageName` (as written in
/// skaffold.yaml) and `Tag` (the reference), which `json` writes as `builds`, `imageName`, `tag`.
fn build_output_data(builds: &[(&str, String)]) -> config::template::Data {
    use config::template::Data;
    let field = |name: &str, json: &str, value: Data| (name.to_string(), json.to_string(), value);
    let items = builds
        .iter()
        .map(|(image, reference)| {
            Data::Struct(vec![
                field("ImageName", "imageName", Data::Text(image.to_string())),
                field("Tag", "tag", Data::Text(reference.clone())),
            ])
        })
        .collect();
    Data::Struct(vec![field("Builds", "builds", Data::List(items))])
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Run the CLI; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kodev: cannot start the runtime: {e}");
            return 1;
        }
    };
    let result = runtime.block_on(async move {
        if let Ok(value) = std::env::var(crate::pipeline::registry::REGISTRY_TIMEOUT_VARIABLE) {
            crate::pipeline::registry::parse_registry_timeout(&value).map_err(KodevError::Usage)?;
        }
        match cli.command {
            Command::Build(args) => run_build(args).await,
            Command::Dev(args) => crate::dev::run(args).await,
            Command::Plan(args) => run_plan(args),
            Command::Init(args) => {
                let dir = args.file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
                let text = config::init::write(dir, &args.file)?;
                print!("{text}");
                eprintln!("kodev: wrote {}", args.file.display());
                Ok(0)
            }
        }
    });
    // A blocked stdin reader must not hold the exit.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kodev: {e}");
            e.exit_code()
        }
    }
}

/// Print events as text lines on stderr until the channel closes.
pub fn spawn_stderr_renderer(
    mut rx: mpsc::UnboundedReceiver<crate::event::Event>,
    format: OutputFormat,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let line = headless::render(format, &event);
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{line}");
        }
    })
}

pub fn describe_target(plan: &Plan) -> String {
    match &plan.target {
        PublishTarget::Registry => {
            let hosts: std::collections::BTreeSet<&str> =
                plan.artifacts.iter().filter_map(|a| a.image_name.split('/').next()).collect();
            format!("registry {}", hosts.into_iter().collect::<Vec<_>>().join(", "))
        }
        PublishTarget::OciLayout(dir) => {
            let shown =
                std::env::current_dir().ok().and_then(|cwd| dir.strip_prefix(cwd).ok().map(|p| p.to_path_buf()));
            format!("oci:{}", shown.as_deref().unwrap_or(dir).display())
        }
    }
}

async fn run_build(args: BuildArgs) -> Result<i32> {
    let report = BuildReport::from_args(&args)?;
    let plan = config::load(&args.common.load_options("build"))?;
    if args.dry_run {
        // As Skaffold's dry run: the tags worked out, nothing built, pushed or written but the file.
        let tagged: Vec<(&str, String)> =
            plan.artifacts.iter().map(|a| (a.image.as_str(), format!("{}:{}", a.image_name, a.tag))).collect();
        report.print(&tagged)?;
        if let Some(path) = &args.file_output {
            write_build_output(path, &tagged)?;
        }
        return Ok(0);
    }
    let builder = Arc::new(Builder::new(&plan));
    let (tx, mut rx) = mpsc::unbounded_channel::<crate::event::Event>();
    let renderer = if args.quiet {
        // Quiet: what went wrong, nothing else.
        let (errors, only_errors) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                use crate::event::EventKind::{BuildFailed, Error};
                if matches!(event.kind, BuildFailed { .. } | Error { .. }) && errors.send(event).is_err() {
                    break;
                }
            }
        });
        spawn_stderr_renderer(only_errors, OutputFormat::Text)
    } else {
        spawn_stderr_renderer(rx, OutputFormat::Text)
    };
    let sink = EventSink::new(tx, "");
    let limit = if plan.concurrency == 0 { plan.artifacts.len().max(1) } else { plan.concurrency };
    let semaphore = Arc::new(tokio::sync::Semaphore::new(limit));
    let mut tasks = Vec::new();
    for artifact in plan.artifacts.clone() {
        let builder = builder.clone();
        let events = sink.for_artifact(&artifact.image);
        let semaphore = semaphore.clone();
        let debug = args.common.debug;
        tasks.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let result = builder.build_artifact(&artifact, debug, &events).await;
            if let Err(e) = &result {
                events.send(crate::event::EventKind::BuildFailed { error: e.to_string() });
            }
            (artifact, result)
        }));
    }
    drop(sink);
    // go runs in its own process group: an interrupt must stop it explicitly.
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            gobuild::kill_running_builds();
            eprintln!("kodev: interrupted");
            std::process::exit(130);
        }
    });
    let mut builds = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (artifact, result) = task.await.map_err(|e| KodevError::build(format!("a build task failed: {e}")))?;
        match result {
            Ok(outcome) => builds.push((artifact, outcome)),
            Err(_) => failed += 1,
        }
    }
    let _ = renderer.await;
    let tagged: Vec<(&str, String)> =
        builds.iter().map(|(a, o)| (a.image.as_str(), o.push.reference.clone())).collect();
    report.print(&tagged)?;
    if let Some(path) = &args.file_output {
        write_build_output(path, &tagged)?;
    }
    if failed > 0 {
        eprintln!("kodev: {failed} of {} artifacts failed", plan.artifacts.len());
        return Ok(1);
    }
    Ok(0)
}

/// Skaffold's build output file: `{"builds":[{"imageName","tag"}]}`, the image as written and
/// the reference built (or, in a dry run, to be built).
fn write_build_output(path: &std::path::Path, builds: &[(&str, String)]) -> Result<()> {
    let doc = json!({
        "builds": builds.iter().map(|(image, reference)| json!({"imageName": image, "tag": reference})).collect::<Vec<_>>()
    });
    let bytes = serde_json::to_vec_pretty(&doc).expect("JSON values serialize");
    crate::pipeline::base::write_atomically(path, &bytes)
        .map_err(|e| KodevError::publish(format!("cannot write {}: {e}", path.display())))
}

fn platform_env(artifact: &crate::config::Artifact) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let crate::platform::PlatformRequest::List(list) = &artifact.platforms {
        for platform in list {
            let env: Vec<String> =
                gobuild::build_env(artifact, platform).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.insert(platform.to_string(), json!(env));
        }
    }
    serde_json::Value::Object(out)
}

/// The `go build` arguments of each platform an artifact lists (its flags expanded for it).
fn platform_args(artifact: &crate::config::Artifact, output: &std::path::Path) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let crate::platform::PlatformRequest::List(list) = &artifact.platforms {
        for platform in list {
            let args = match artifact.for_platform(platform) {
                Ok(own) => json!(gobuild::build_args(&own, false, output)),
                Err(message) => json!({ "error": message }),
            };
            out.insert(platform.to_string(), args);
        }
    }
    serde_json::Value::Object(out)
}

fn run_plan(args: PlanArgs) -> Result<i32> {
    let options = LoadOptions { describe_only: true, ..args.config.load_options("build") };
    let plan = config::load(&options)?;
    if args.json {
        let artifacts: Vec<_> = plan
            .artifacts
            .iter()
            .map(|a| {
                let output = PathBuf::from(format!("<out>/{}", a.binary_name()));
                let mut go_build = json!({
                    "env": a.env,
                    "args": gobuild::build_args(a, false, &output),
                    // The environment each platform's go build gets on top of the process's.
                    "platformEnv": platform_env(a),
                });
                // Flags that read the platform's GOOS, GOARCH… differ by platform: each one's.
                if a.per_platform.is_some() {
                    go_build["platformArgs"] = platform_args(a, &output);
                }
                json!({
                    "image": a.image,
                    "imageName": a.image_name,
                    "tag": a.tag,
                    "importPath": a.import_path,
                    "context": a.context,
                    "workDir": a.work_dir,
                    "platforms": a.platforms.describe(),
                    "baseImage": a.base.to_string(),
                    "dependencies": a.dependencies.as_ref().map(|d| json!(d)).unwrap_or_else(|| json!({"goDependencyGraph": true})),
                    "goBuild": go_build,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({"artifacts": artifacts})).expect("JSON values serialize"));
    } else {
        println!("target: {}", describe_target(&plan));
        let rows: Vec<[String; 5]> = plan
            .artifacts
            .iter()
            .map(|a| {
                [
                    a.image.clone(),
                    a.reference(),
                    a.import_path.clone(),
                    a.platforms.describe().join(","),
                    a.base.to_string(),
                ]
            })
            .collect();
        let header = ["IMAGE", "NAME:TAG", "IMPORT PATH", "PLATFORMS", "BASE"].map(str::to_string);
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
            println!("{}", cells.join("  ").trim_end());
        }
    }
    Ok(0)
}
