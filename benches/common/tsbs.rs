//! A generator of TSBS "cpu-only" line protocol: measurement `cpu`, 10 tags, 10 float fields
//! moving as bounded random walks, one point per host every 10 seconds.

use std::fmt::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const FIELDS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
];

const REGIONS: [(&str, [&str; 3]); 3] = [
    ("us-east-1", ["us-east-1a", "us-east-1b", "us-east-1c"]),
    (
        "eu-central-1",
        ["eu-central-1a", "eu-central-1b", "eu-central-1c"],
    ),
    (
        "ap-southeast-2",
        ["ap-southeast-2a", "ap-southeast-2b", "ap-southeast-2c"],
    ),
];
const OS: [&str; 3] = ["Ubuntu16.10", "Ubuntu16.04LTS", "Ubuntu15.10"];
const ARCH: [&str; 2] = ["x64", "x86"];
const TEAM: [&str; 4] = ["SF", "NYC", "LON", "CHI"];
const ENV: [&str; 3] = ["production", "staging", "test"];

/// 2016-01-01T00:00:00Z, TSBS's default start.
pub const START_NS: i64 = 1_451_606_400_000_000_000;
pub const INTERVAL_NS: i64 = 10_000_000_000;

pub struct Generator {
    tags: Vec<String>,
    values: Vec<[f64; 10]>,
    rng: StdRng,
    step: i64,
}

impl Generator {
    pub fn new(hosts: usize, seed: u64) -> Generator {
        let mut rng = StdRng::seed_from_u64(seed);
        let tags = (0..hosts)
            .map(|h| {
                let (region, dcs) = REGIONS[rng.random_range(0..REGIONS.len())];
                format!(
                    "hostname=host_{h},region={region},datacenter={},rack={},os={},arch={},team={},service={},service_version={},service_environment={}",
                    dcs[rng.random_range(0..3)],
                    rng.random_range(0..100),
                    OS[rng.random_range(0..OS.len())],
                    ARCH[rng.random_range(0..ARCH.len())],
                    TEAM[rng.random_range(0..TEAM.len())],
                    rng.random_range(0..20),
                    rng.random_range(0..2),
                    ENV[rng.random_range(0..ENV.len())],
                )
            })
            .collect();
        let values = (0..hosts)
            .map(|_| std::array::from_fn(|_| rng.random_range(0.0..100.0)))
            .collect();
        Generator {
            tags,
            values,
            rng,
            step: 0,
        }
    }

    /// Appends one point per host for the next 10-second step.
    pub fn next_step(&mut self, out: &mut String) {
        let ts = START_NS + self.step * INTERVAL_NS;
        self.step += 1;
        for (tags, values) in self.tags.iter().zip(self.values.iter_mut()) {
            out.push_str("cpu,");
            out.push_str(tags);
            for (i, (name, v)) in FIELDS.iter().zip(values.iter_mut()).enumerate() {
                *v = (*v + self.rng.random_range(-1.0..1.0)).clamp(0.0, 100.0);
                out.push(if i == 0 { ' ' } else { ',' });
                write!(out, "{name}={v:.2}").expect("writing to a String");
            }
            writeln!(out, " {ts}").expect("writing to a String");
        }
    }

    /// At least `lines` lines, whole steps.
    pub fn lines(&mut self, lines: usize) -> String {
        let mut out = String::with_capacity(lines * 320);
        let mut n = 0;
        while n < lines {
            self.next_step(&mut out);
            n += self.tags.len();
        }
        out
    }
}

/// The TSBS devops queries, named as TSBS names them, for `hours` of data from 2016-01-01.
#[allow(dead_code)] // not every bench that includes this module queries
pub fn devops_queries(hours: usize) -> Vec<(&'static str, String)> {
    let t = |h: usize| format!("'2016-01-01 {h:02}:00:00'");
    let mid = hours / 2;
    let last = hours.saturating_sub(1);
    let metrics8 = "max(usage_user), max(usage_system), max(usage_idle), max(usage_nice), \
                    max(usage_iowait), max(usage_irq), max(usage_softirq), max(usage_steal)";
    let all10 = "usage_user, usage_system, usage_idle, usage_nice, usage_iowait, usage_irq, \
                 usage_softirq, usage_steal, usage_guest, usage_guest_nice";
    let avg_all: Vec<String> = all10.split(", ").map(|c| format!("avg({c})")).collect();
    let max_all: Vec<String> = all10.split(", ").map(|c| format!("max({c})")).collect();
    let hosts8 = "'host_1','host_2','host_3','host_4','host_5','host_6','host_7','host_8'";
    let hosts5 = "'host_1','host_2','host_3','host_4','host_5'";
    vec![
        (
            "single-groupby-1-1-1",
            format!(
                "SELECT date_trunc('minute', time) AS minute, max(usage_user) FROM cpu \
                 WHERE hostname = 'host_9' AND time >= {} AND time < {} GROUP BY 1 ORDER BY 1",
                t(mid),
                t(mid + 1)
            ),
        ),
        (
            "single-groupby-1-1-12",
            format!(
                "SELECT date_trunc('minute', time) AS minute, max(usage_user) FROM cpu \
                 WHERE hostname = 'host_9' AND time >= {} GROUP BY 1 ORDER BY 1",
                t(0)
            ),
        ),
        (
            "single-groupby-5-1-1",
            format!(
                "SELECT date_trunc('minute', time) AS minute, max(usage_user) FROM cpu \
                 WHERE hostname IN ({hosts5}) AND time >= {} AND time < {} GROUP BY 1 ORDER BY 1",
                t(mid),
                t(mid + 1)
            ),
        ),
        (
            "single-groupby-5-8-1",
            format!(
                "SELECT date_trunc('minute', time) AS minute, {metrics8} FROM cpu \
                 WHERE hostname IN ({hosts5}) AND time >= {} AND time < {} GROUP BY 1 ORDER BY 1",
                t(mid),
                t(mid + 1)
            ),
        ),
        (
            "cpu-max-all-1",
            format!(
                "SELECT date_trunc('hour', time) AS hour, {} FROM cpu \
                 WHERE hostname = 'host_9' AND time >= {} AND time < {} GROUP BY 1 ORDER BY 1",
                max_all.join(", "),
                t(last.saturating_sub(8)),
                t(last)
            ),
        ),
        (
            "cpu-max-all-8",
            format!(
                "SELECT date_trunc('hour', time) AS hour, {} FROM cpu \
                 WHERE hostname IN ({hosts8}) AND time >= {} AND time < {} GROUP BY 1 ORDER BY 1",
                max_all.join(", "),
                t(last.saturating_sub(8)),
                t(last)
            ),
        ),
        (
            "double-groupby-1",
            "SELECT date_trunc('hour', time) AS hour, hostname, avg(usage_user) FROM cpu \
             GROUP BY 1, 2 ORDER BY 1, 2"
                .to_owned(),
        ),
        (
            "double-groupby-all",
            format!(
                "SELECT date_trunc('hour', time) AS hour, hostname, {} FROM cpu \
                 GROUP BY 1, 2 ORDER BY 1, 2",
                avg_all.join(", ")
            ),
        ),
        (
            "high-cpu-1",
            "SELECT * FROM cpu WHERE usage_user > 90.0 AND hostname = 'host_9' ORDER BY time"
                .to_owned(),
        ),
        (
            "high-cpu-all",
            format!(
                "SELECT * FROM cpu WHERE usage_user > 90.0 AND time >= {} AND time < {}",
                t(mid),
                t(mid + 1)
            ),
        ),
        (
            "lastpoint",
            "SELECT DISTINCT ON (hostname) * FROM cpu ORDER BY hostname, time DESC".to_owned(),
        ),
        (
            "groupby-orderby-limit",
            format!(
                "SELECT date_trunc('minute', time) AS minute, max(usage_user) FROM cpu \
                 WHERE time < {} GROUP BY 1 ORDER BY 1 DESC LIMIT 5",
                t(mid)
            ),
        ),
    ]
}
