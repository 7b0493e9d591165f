//! The supervisor (`cluster run`) and `cluster status`, against the traits of
//! [`super`] so tests drive them with fakes.
//!
//! Order: settings → the overlay up (`/run/kiln/overlay.json` and the enrollment) →
//! join parameters from kiln-enroll (`GET /v1/cluster`, retried with backoff) → role
//! and kind checks → files under /run/kiln → k3s unit started or `kubeadm join` → joined
//! (token files deleted, systemd told to restart the unit from now on), or a classified
//! failure, backoff, and everything again from kiln-enroll's parameters (an operator may
//! have fixed them meanwhile).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use kiln_enroll_proto::api::{ClusterJoin, Join, Role};
use kiln_enroll_proto::validate;

use super::{
    k3s, kubeadm, ClusterSys, NodeFacts, Phase, Remote, StatusFile, Systemd, UnitState,
    K3S_AGENT_TOKEN, K3S_KUBELET_CERT, K3S_TOKEN, KUBEADM_CONFIG, KUBELET_CONF, KUBELET_UNIT,
    KUBERNETES_ETC, RANCHER_ETC, RESTART_DROPIN, RESTART_DROPIN_TEXT, RUNTIME_UNITS, STATUS_PATH,
    TAG,
};
use crate::backoff::Backoff;
use crate::config::settings::{ClusterKind, ClusterSettings, ImageRole};
use crate::overlay::state::{self, NodeView};
use crate::sys::{prefer_ipv4, Capture, Cmd, CommandResult};

/// How often the overlay's status file is looked for.
pub const OVERLAY_POLL: Duration = Duration::from_secs(5);
/// First and longest wait between questions to kiln-enroll (errors, or no server yet).
pub const ASK_BACKOFF: Backoff = Backoff::secs(5, 300);
/// First and longest wait after a failed join.
pub const JOIN_BACKOFF: Backoff = Backoff::secs(10, 600);
/// How often a starting k3s unit is looked at.
pub const JOIN_POLL: Duration = Duration::from_secs(5);
/// How often a joined k3s unit is checked.
pub const WATCH_POLL: Duration = Duration::from_secs(10);
/// How long a k3s unit may take to join before the attempt counts as failed.
pub const JOIN_TIMEOUT_SECS: u64 = 600;
/// A k3s unit still starting this long has its journal read for a refused token (k3s
/// retries a refused token forever instead of failing).
pub const JOURNAL_CHECK_SECS: u64 = 30;
/// An active k3s unit whose kubelet certificate exists but is older than the start
/// (a node that joined on an earlier boot) counts as joined after this long.
pub const SETTLE_SECS: u64 = 60;
/// Journal lines read after a failure.
pub const JOURNAL_LINES: u32 = 30;
/// Longest failure line printed.
pub const MAX_LINE: usize = 300;

/// Everything the supervisor does to the world.
pub struct Env<'a> {
    /// systemd.
    pub systemd: &'a mut dyn Systemd,
    /// kiln-enroll and DNS.
    pub remote: &'a mut dyn Remote,
    /// Files, the clock, the console, randomness and kubeadm.
    pub sys: &'a mut dyn ClusterSys,
}

/// Why a join failed, as the console says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailClass {
    /// The server refused the token.
    TokenRefused,
    /// The server could not be reached.
    Unreachable,
    /// Anything else.
    Other,
}

impl FailClass {
    /// The words on the console.
    pub fn name(self) -> &'static str {
        match self {
            FailClass::TokenRefused => "token refused",
            FailClass::Unreachable => "server unreachable",
            FailClass::Other => "other",
        }
    }
}

fn is_failure_line(l: &str) -> bool {
    let l = l.to_ascii_lowercase();
    [
        "level=fatal",
        "level=error",
        "failed",
        "error",
        "refused",
        "invalid",
    ]
    .iter()
    .any(|w| l.contains(w))
}

/// Classifies a failed join from its log lines (k3s's journal or kubeadm's standard
/// error): the class and the line that told it (the last line when none did).
pub fn classify(kind: ClusterKind, lines: &[String]) -> (FailClass, String) {
    let token = |l: &str| match kind {
        ClusterKind::K3s => {
            l.contains("401 Unauthorized")
                || (l.to_ascii_lowercase().contains("token") && is_failure_line(l))
        }
        ClusterKind::Kubeadm => {
            l.contains("unable to fetch the kubeadm-config")
                || (l.contains("token id") && l.contains("is invalid"))
                || l.contains("Unauthorized")
        }
    };
    let unreachable = |l: &str| {
        let l = l.to_ascii_lowercase();
        ["connection refused", "no route to host", "i/o timeout"]
            .iter()
            .any(|w| l.contains(w))
    };
    let last = |f: &dyn Fn(&str) -> bool| lines.iter().rev().find(|l| f(l)).cloned();
    if let Some(l) = last(&token) {
        return (FailClass::TokenRefused, l);
    }
    if let Some(l) = last(&unreachable) {
        return (FailClass::Unreachable, l);
    }
    let line = last(&|l: &str| is_failure_line(l))
        .or_else(|| last(&|l: &str| !l.trim().is_empty()))
        .unwrap_or_else(|| "no log lines".to_string());
    (FailClass::Other, line)
}

/// The secrets of a join: each token and key, and each of their `:`/`.`-separated
/// parts of 8 or more characters (a k3s token's password, a bootstrap token's secret).
pub fn secrets(join: &Join) -> Vec<String> {
    let whole: Vec<&str> = match join {
        Join::K3s(j) => [Some(j.token.as_str()), j.agent_token.as_deref()]
            .into_iter()
            .flatten()
            .collect(),
        Join::Kubeadm(j) => [Some(j.token.as_str()), j.certificate_key.as_deref()]
            .into_iter()
            .flatten()
            .collect(),
    };
    let mut out: Vec<String> = Vec::new();
    for w in whole {
        out.push(w.to_string());
        out.extend(
            w.split([':', '.'])
                .filter(|p| p.len() >= 8)
                .map(str::to_string),
        );
    }
    // Longest first, so a whole token is replaced before its parts.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out.retain(|s| !s.is_empty());
    out
}

/// `line` on one line, without any of `secrets`, at most [`MAX_LINE`] characters.
pub fn redact(line: &str, secrets: &[String]) -> String {
    let mut out = line.replace(['\n', '\r'], " ").trim().to_string();
    for s in secrets {
        out = out.replace(s.as_str(), "<redacted>");
    }
    if out.chars().count() > MAX_LINE {
        out = out.chars().take(MAX_LINE).collect::<String>() + "...";
    }
    out
}

/// The image's labels with the token's on top (the token wins on a clash), and why each
/// label from kiln-enroll that breaks Kubernetes' label rules was left out: the kubelet
/// refuses all of `--node-labels` for one bad label, so the node joins without it.
pub fn merged_labels(
    settings: &ClusterSettings,
    join: &ClusterJoin,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut out = settings.labels.clone();
    let mut refused = Vec::new();
    for (k, v) in &join.labels {
        match kiln_contract::names::check_label(k, v) {
            Ok(()) => {
                out.insert(k.clone(), v.clone());
            }
            Err(why) => refused.push(format!(
                "label {k:?}={v:?} from kiln-enroll is left out: {why}"
            )),
        }
    }
    (out, refused)
}

/// Whether an image of `image` role may run a node with the token's `role`.
pub fn role_fits(image: ImageRole, role: Role) -> bool {
    matches!(
        (image, role),
        (ImageRole::Any, _) | (ImageRole::Worker, Role::Worker) | (ImageRole::Server, Role::Server)
    )
}

/// A join that did not happen.
enum Failure {
    /// Retry after a backoff.
    Retry(FailClass, String),
    /// Stop with this exit code (the message was printed).
    Stop(u8),
}

struct Sup<'e, 'a> {
    env: &'e mut Env<'a>,
    settings: &'e ClusterSettings,
    status: StatusFile,
    /// The last state-change line printed, so waiting and retrying stay quiet.
    said: Option<String>,
}

impl Sup<'_, '_> {
    fn say(&mut self, text: &str) {
        self.env.sys.say(&format!("{TAG}: {text}"));
    }

    fn error(&mut self, text: &str) {
        self.env.sys.say(&format!("{TAG}: ERROR: {text}"));
    }

    /// The labels the node joins with; each one of kiln-enroll's that is left out is
    /// named on the console.
    fn labels(&mut self, cj: &ClusterJoin) -> BTreeMap<String, String> {
        let (labels, refused) = merged_labels(self.settings, cj);
        for why in refused {
            self.note(&format!("ERROR: {why}"));
        }
        labels
    }

    /// Prints `text` unless it is the state-change line printed last.
    fn note(&mut self, text: &str) {
        if self.said.as_deref() != Some(text) {
            self.say(text);
            self.said = Some(text.to_string());
        }
    }

    fn set(
        &mut self,
        phase: Phase,
        role: Option<String>,
        last_error: Option<String>,
        next: Option<Duration>,
    ) {
        if phase != self.status.phase {
            self.status.since = self.env.sys.now();
        }
        self.status.phase = phase;
        if role.is_some() {
            self.status.role = role;
        }
        self.status.last_error = last_error;
        self.status.next_retry_secs = next.map(|d| d.as_secs());
        let mut bytes = serde_json::to_vec_pretty(&self.status).unwrap_or_default();
        bytes.push(b'\n');
        if let Err(e) = self.env.sys.write_private(STATUS_PATH, &bytes) {
            self.error(&format!("writing {STATUS_PATH}: {e}"));
        }
    }

    fn wait(&mut self, d: Duration) {
        self.env.sys.sleep(d);
    }

    /// Waits until kiln0 is up and the node enrolled; its view of itself.
    fn wait_overlay(&mut self) -> NodeView {
        loop {
            let up = self.env.sys.exists(crate::overlay::STATUS_PATH);
            let view = if up {
                state::node_view(&mut *self.env.sys)
            } else {
                Ok(None)
            };
            match view {
                Ok(Some(v)) => return v,
                Ok(None) => {
                    self.set(Phase::WaitingOverlay, None, None, Some(OVERLAY_POLL));
                    self.note(
                        "waiting for the overlay (kiln-overlay.service: kiln0 up, node \
                         enrolled)",
                    );
                }
                Err(e) => {
                    let msg = format!("the overlay's state is unreadable: {e}");
                    self.set(
                        Phase::WaitingOverlay,
                        None,
                        Some(msg.clone()),
                        Some(OVERLAY_POLL),
                    );
                    self.note(&format!("ERROR: {msg}; waiting for kiln-overlay to fix it"));
                }
            }
            self.wait(OVERLAY_POLL);
        }
    }

    fn facts(&mut self, view: &NodeView) -> NodeFacts {
        let external_ip = view.public_endpoint.as_deref().and_then(|ep| {
            let (host, _) = validate::parse_host_port(ep).ok()?;
            match host.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    let addrs = self.env.sys.resolve(&host, 0).ok()?;
                    prefer_ipv4(&addrs).map(|a| a.ip())
                }
            }
        });
        NodeFacts {
            name: view.name.clone(),
            address_v4: view.address_v4,
            external_ip,
        }
    }

    /// Asks kiln-enroll until it answers; Err(exit code) when it refuses for good.
    fn ask(&mut self, view: &NodeView, attempt: &mut u32) -> Result<ClusterJoin, u8> {
        loop {
            match self
                .env
                .remote
                .cluster(&view.server, view.ca_hash, &view.auth)
            {
                Ok(j) => return Ok(j),
                Err(e) if e.retryable() => {
                    let d = ASK_BACKOFF.delay(*attempt, self.env.sys.jitter());
                    *attempt = attempt.saturating_add(1);
                    let msg = format!("asking kiln-enroll for the join parameters: {e}");
                    self.set(Phase::Joining, None, Some(msg), Some(d));
                    self.note(&format!(
                        "kiln-enroll does not answer ({e}); asking again with backoff"
                    ));
                    self.wait(d);
                }
                Err(e) => {
                    let msg = format!(
                        "kiln-enroll refuses the join parameters: {e}; fix the node's \
                         enrollment (kiln-agent overlay status) and restart kiln-cluster"
                    );
                    self.set(Phase::Failed, None, Some(msg.clone()), None);
                    self.error(&msg);
                    return Err(2);
                }
            }
        }
    }

    fn stop_with(&mut self, role: Option<String>, msg: &str) -> u8 {
        self.set(Phase::Failed, role, Some(msg.to_string()), None);
        self.error(msg);
        2
    }

    fn write(&mut self, path: &str, data: &[u8]) -> Result<(), Failure> {
        self.env.sys.write_private(path, data).map_err(|e| {
            self.error(&format!("writing {path}: {e}"));
            Failure::Stop(1)
        })
    }

    fn mkdir(&mut self, path: &str) -> Result<(), Failure> {
        self.env.sys.mkdir_private(path).map_err(|e| {
            self.error(&format!("creating {path}: {e}"));
            Failure::Stop(1)
        })
    }

    /// Runs kubeadm to its end, its progress on the journal: the exit code (None when it
    /// could not run) and its standard error (or why it could not run).
    fn kubeadm(&mut self, args: &[&str]) -> (Option<i32>, String) {
        match self
            .env
            .sys
            .run(&Cmd::new("kubeadm", args).capture(Capture::Stderr))
        {
            CommandResult::Exited { code, stderr, .. } => (code, stderr),
            CommandResult::TimedOut => (None, "kubeadm timed out".to_string()),
            CommandResult::Failed(why) => (None, why),
        }
    }

    fn journal(&mut self, unit: &str, since: u64) -> Vec<String> {
        self.env.systemd.journal_tail(unit, since, JOURNAL_LINES)
    }

    fn join_k3s(
        &mut self,
        cj: &ClusterJoin,
        j: &kiln_enroll_proto::api::K3sJoin,
        node: &NodeFacts,
    ) -> Result<&'static str, Failure> {
        let labels = self.labels(cj);
        for (path, data) in k3s::files(self.settings, cj.role, &labels, j, node) {
            self.write(path, &data)?;
        }
        self.mkdir(RANCHER_ETC)?;
        let unit = k3s::unit(cj.role);
        let _ = self.env.systemd.reset_failed(unit);
        let start = self.env.sys.now();
        if let Err(e) = self.env.systemd.start(unit) {
            return Err(Failure::Retry(
                FailClass::Other,
                format!("systemctl start {unit}: {e}"),
            ));
        }
        loop {
            self.wait(JOIN_POLL);
            let now = self.env.sys.now();
            let running = now.saturating_sub(start);
            match self.env.systemd.state(unit) {
                UnitState::Active => {
                    // One second of slack: a file system keeps whole seconds.
                    let fresh = self
                        .env
                        .sys
                        .modified(K3S_KUBELET_CERT)
                        .is_some_and(|t| t + 1 >= start || running >= SETTLE_SECS);
                    if fresh {
                        return Ok(unit);
                    }
                }
                UnitState::Failed => {
                    let (c, l) = classify(ClusterKind::K3s, &self.journal(unit, start));
                    return Err(Failure::Retry(c, l));
                }
                UnitState::Inactive if running >= JOURNAL_CHECK_SECS => {
                    let (c, l) = classify(ClusterKind::K3s, &self.journal(unit, start));
                    return Err(Failure::Retry(c, l));
                }
                UnitState::Activating if running >= JOURNAL_CHECK_SECS => {
                    let (c, l) = classify(ClusterKind::K3s, &self.journal(unit, start));
                    if c == FailClass::TokenRefused {
                        let _ = self.env.systemd.stop(unit);
                        return Err(Failure::Retry(c, l));
                    }
                }
                _ => {}
            }
            if running >= JOIN_TIMEOUT_SECS {
                let _ = self.env.systemd.stop(unit);
                let (c, l) = classify(ClusterKind::K3s, &self.journal(unit, start));
                let l = format!("not joined after {JOIN_TIMEOUT_SECS} s; last log line: {l}");
                return Err(Failure::Retry(c, l));
            }
        }
    }

    fn join_kubeadm(
        &mut self,
        cj: &ClusterJoin,
        j: &kiln_enroll_proto::api::KubeadmJoin,
        node: &NodeFacts,
    ) -> Result<&'static str, Failure> {
        self.mkdir(KUBERNETES_ETC)?;
        if self.env.sys.exists(KUBELET_CONF) {
            self.say(&format!(
                "{KUBELET_CONF} exists: joined on an earlier boot, starting the kubelet"
            ));
            if let Err(e) = self.env.systemd.start(KUBELET_UNIT) {
                return Err(Failure::Retry(
                    FailClass::Other,
                    format!("systemctl start {KUBELET_UNIT}: {e}"),
                ));
            }
            return Ok(KUBELET_UNIT);
        }
        let labels = self.labels(cj);
        let text = kubeadm::join_config(self.settings, cj.role, &labels, j, node);
        self.write(KUBEADM_CONFIG, text.as_bytes())?;
        let (code, stderr) = self.kubeadm(&["join", "--config", KUBEADM_CONFIG]);
        if code == Some(0) && self.env.sys.exists(KUBELET_CONF) {
            return Ok(KUBELET_UNIT);
        }
        let lines: Vec<String> = stderr.lines().map(str::to_string).collect();
        let (c, mut l) = classify(ClusterKind::Kubeadm, &lines);
        if code == Some(0) {
            l = format!("kubeadm join exited 0 but left no {KUBELET_CONF}");
        }
        // A failed join can leave certificates and manifests behind that make the next
        // one stop in its preflight checks.
        let (reset, _) = self.kubeadm(&["reset", "--force"]);
        if reset != Some(0) {
            self.error(&format!(
                "kubeadm reset --force after the failed join: exit {reset:?}"
            ));
        }
        Err(Failure::Retry(c, l))
    }

    /// The node joined: secrets deleted. The kubelet of a kubeadm node needs no secret to
    /// start again, so systemd restarts it from now on; k3s reads its token at every
    /// start, so kiln-cluster itself watches it and joins again (fresh token from
    /// kiln-enroll, deleted once up) when it stops.
    fn joined(&mut self, unit: &str, cj: &ClusterJoin, node: &NodeFacts) {
        for path in [K3S_TOKEN, K3S_AGENT_TOKEN, KUBEADM_CONFIG] {
            if let Err(e) = self.env.sys.remove_file(path) {
                self.error(&format!("removing {path}: {e}"));
            }
        }
        if unit == KUBELET_UNIT {
            self.restart_dropin(unit);
        }
        self.set(Phase::Joined, None, None, None);
        self.say(&format!(
            "joined {} as {} {} (node-ip {})",
            self.settings.kind.name(),
            cj.role.as_str(),
            node.name,
            node.address_v4
        ));
    }

    /// Waits while `unit` runs; returns its state once it stopped.
    fn watch(&mut self, unit: &str) -> UnitState {
        loop {
            self.wait(WATCH_POLL);
            match self.env.systemd.state(unit) {
                UnitState::Active | UnitState::Activating => {}
                other => return other,
            }
        }
    }

    fn restart_dropin(&mut self, unit: &str) {
        let dropin = format!("{RUNTIME_UNITS}/{unit}.d/{RESTART_DROPIN}");
        match self
            .env
            .sys
            .write_private(&dropin, RESTART_DROPIN_TEXT.as_bytes())
        {
            Ok(()) => {
                if let Err(e) = self.env.systemd.daemon_reload() {
                    self.error(&format!("systemctl daemon-reload: {e}"));
                }
            }
            Err(e) => self.error(&format!("writing {dropin}: {e}")),
        }
    }
}

/// `cluster run` after the settings: Some(settings) supervises until the node joined
/// (exit 0) or needs a person (exit 2; 1 when files cannot be written); None idles.
/// A joined k3s node stays supervised: each time its unit stops, it joins again, at most
/// `rejoins` times (the daemon passes `u32::MAX`), then returns 0.
pub fn supervise(env: &mut Env<'_>, settings: Option<&ClusterSettings>, rejoins: u32) -> u8 {
    let mut rejoins = rejoins;
    let Some(settings) = settings else {
        env.sys.say(&format!(
            "{TAG}: no [cluster] in {}, nothing to do",
            crate::config::settings::SETTINGS_PATH
        ));
        let st = StatusFile {
            kind: None,
            role: None,
            phase: Phase::Idle,
            last_error: None,
            next_retry_secs: None,
            since: env.sys.now(),
        };
        let mut bytes = serde_json::to_vec_pretty(&st).unwrap_or_default();
        bytes.push(b'\n');
        let _ = env.sys.write_private(STATUS_PATH, &bytes);
        return 0;
    };
    let status = StatusFile {
        kind: Some(settings.kind.name().to_string()),
        role: Some(settings.role.name().to_string()),
        phase: Phase::Joining,
        last_error: None,
        next_retry_secs: None,
        since: env.sys.now(),
    };
    let mut sup = Sup {
        env,
        settings,
        status,
        said: None,
    };
    let kind = settings.kind.name();
    let mut ask_attempt = 0u32;
    let mut join_attempt = 0u32;
    loop {
        let view = sup.wait_overlay();
        let cj = match sup.ask(&view, &mut ask_attempt) {
            Ok(j) => j,
            Err(code) => return code,
        };
        let role = Some(cj.role.as_str().to_string());
        if !role_fits(settings.role, cj.role) {
            return sup.stop_with(
                role,
                &format!(
                    "this image is for {} nodes only (cluster.role = {:?} in {}), but the \
                     node's token makes it a {}: enroll it with a {} token, or use an \
                     image with role \"any\" or {:?}",
                    settings.role.name(),
                    settings.role.name(),
                    crate::config::settings::SETTINGS_PATH,
                    cj.role.as_str(),
                    settings.role.name(),
                    cj.role.as_str()
                ),
            );
        }
        let join = match &cj.join {
            None => {
                let d = ASK_BACKOFF.delay(ask_attempt, sup.env.sys.jitter());
                ask_attempt = ask_attempt.saturating_add(1);
                sup.set(Phase::WaitingServer, role, None, Some(d));
                sup.note(
                    "kiln-enroll has no cluster yet (`kiln-enroll cluster init` gives it \
                     one); asking again with backoff",
                );
                sup.wait(d);
                continue;
            }
            Some(j) => j.clone(),
        };
        let join_kind = match &join {
            Join::K3s(_) => ClusterKind::K3s,
            Join::Kubeadm(_) => ClusterKind::Kubeadm,
        };
        if join_kind != settings.kind {
            return sup.stop_with(
                role,
                &format!(
                    "this image joins with {kind} (cluster.kind in {}), but kiln-enroll's \
                     cluster is {}: build the image with kind = {:?}",
                    crate::config::settings::SETTINGS_PATH,
                    join_kind.name(),
                    join_kind.name()
                ),
            );
        }
        if let Join::K3s(k) = &join {
            if cj.role == Role::Worker && k.server_url.is_none() {
                let d = ASK_BACKOFF.delay(ask_attempt, sup.env.sys.jitter());
                ask_attempt = ask_attempt.saturating_add(1);
                sup.set(Phase::WaitingServer, role, None, Some(d));
                sup.note("waiting for a server node (no k3s server has enrolled yet)");
                sup.wait(d);
                continue;
            }
        }
        ask_attempt = 0;
        let node = sup.facts(&view);
        sup.set(Phase::Joining, role.clone(), None, None);
        sup.note(&format!(
            "joining {kind} as {} {} (node-ip {}{})",
            cj.role.as_str(),
            node.name,
            node.address_v4,
            node.external_ip
                .map_or(String::new(), |ip| format!(", external ip {ip}"))
        ));
        let result = match &join {
            Join::K3s(k) => sup.join_k3s(&cj, k, &node),
            Join::Kubeadm(k) => sup.join_kubeadm(&cj, k, &node),
        };
        match result {
            Ok(unit) => {
                sup.joined(unit, &cj, &node);
                join_attempt = 0;
                if unit == KUBELET_UNIT || rejoins == 0 {
                    return 0;
                }
                let state = sup.watch(unit);
                rejoins -= 1;
                sup.set(Phase::Joining, None, None, None);
                sup.say(&format!(
                    "{unit} stopped ({state:?}); k3s reads its token at every start: asking \
                     kiln-enroll for it and starting {unit} again"
                ));
                let _ = sup.env.systemd.reset_failed(unit);
            }
            Err(Failure::Stop(code)) => return code,
            Err(Failure::Retry(class, line)) => {
                let line = redact(&line, &secrets(&join));
                let d = JOIN_BACKOFF.delay(join_attempt, sup.env.sys.jitter());
                join_attempt = join_attempt.saturating_add(1);
                sup.set(
                    Phase::Failed,
                    role,
                    Some(format!("{}: {line}", class.name())),
                    Some(d),
                );
                let msg = format!(
                    "{kind} join failed ({}): {line}; retrying in {}s",
                    class.name(),
                    d.as_secs()
                );
                sup.error(&msg);
                sup.said = Some(msg);
                if let Join::K3s(_) = &join {
                    let _ = sup.env.systemd.reset_failed(k3s::unit(cj.role));
                }
                sup.wait(d);
            }
        }
    }
}

/// The status file as console lines.
pub fn status_lines(st: &StatusFile, now: u64) -> Vec<String> {
    let mut out = vec![format!(
        "cluster {} role {} phase {} for {}s",
        st.kind.as_deref().unwrap_or("-"),
        st.role.as_deref().unwrap_or("-"),
        st.phase.name(),
        now.saturating_sub(st.since)
    )];
    if let Some(e) = &st.last_error {
        out.push(format!("last error: {e}"));
    }
    if let Some(n) = st.next_retry_secs {
        out.push(format!("next try: {n}s after the last one failed"));
    }
    out
}

/// `cluster status`: prints the status file; 1 when there is none or it is unreadable.
pub fn status(sys: &mut dyn ClusterSys) -> u8 {
    let bytes = match sys.read_file(STATUS_PATH) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            sys.say(&format!(
                "{TAG}: no status ({STATUS_PATH} does not exist: kiln-cluster.service has not \
                 run this boot)"
            ));
            return 1;
        }
        Err(e) => {
            sys.say(&format!("{TAG}: ERROR: {STATUS_PATH}: {e}"));
            return 1;
        }
    };
    match serde_json::from_slice::<StatusFile>(&bytes) {
        Ok(st) => {
            let now = sys.now();
            for l in status_lines(&st, now) {
                sys.say(&l);
            }
            0
        }
        Err(e) => {
            sys.say(&format!("{TAG}: ERROR: {STATUS_PATH}: {e}"));
            1
        }
    }
}
