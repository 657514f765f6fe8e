//! Authentication and TLS with the real clients: psql, psycopg, asyncpg, curl, the InfluxDB 2
//! Python client, and certificates made with the openssl command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::io::Write as _;

use crate::support::{TestServer, curl, run_python};

/// Runs `gannet` (user, token, ...) on a data directory; returns its stdout.
fn gannet(data_dir: &Path, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gannet"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "gannet {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// psql as `user` with `password` (none: no PGPASSWORD) and extra connection settings.
fn psql(
    server: &TestServer,
    conninfo: &str,
    password: Option<&str>,
    sql: &str,
) -> (bool, String, String) {
    let mut command = Command::new("psql");
    command
        .args(["-X", "-A", "-t", "-w", "-d"])
        .arg(format!(
            "host={} port={} {conninfo}",
            server.pg.ip(),
            server.pg.port()
        ))
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD");
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let out = command.output().expect("psql is installed");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn postgres_users_log_in_with_scram_and_nobody_else_does() {
    let server = TestServer::start();
    // No user yet: loopback trusts, as a local PostgreSQL with `trust` does.
    let (ok, _, err) = psql(
        &server,
        "dbname=postgres user=anyone",
        None,
        "CREATE USER admin WITH PASSWORD 'Adm1n pass' SUPERUSER",
    );
    assert!(ok, "{err}");

    // From now on every connection needs a password.
    let (ok, _, err) = psql(&server, "dbname=postgres user=admin", None, "SELECT 1");
    assert!(!ok && err.contains("password"), "{err}");
    let (ok, _, err) = psql(
        &server,
        "dbname=postgres user=admin",
        Some("wrong"),
        "SELECT 1",
    );
    assert!(
        !ok && err.contains("password authentication failed for user \"admin\""),
        "{err}"
    );
    let (ok, _, err) = psql(
        &server,
        "dbname=postgres user=nobody",
        Some("x"),
        "SELECT 1",
    );
    assert!(
        !ok && err.contains("password authentication failed for user \"nobody\""),
        "{err}"
    );
    let (ok, out, err) = psql(
        &server,
        "dbname=postgres user=admin",
        Some("Adm1n pass"),
        "SELECT 41 + 1",
    );
    assert!(ok && out.trim() == "42", "{out}{err}");
    // The database is checked after the password, and only then.
    let (ok, _, err) = psql(&server, "dbname=nosuch user=nobody", Some("x"), "SELECT 1");
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    let (ok, _, err) = psql(
        &server,
        "dbname=nosuch user=admin",
        Some("Adm1n pass"),
        "SELECT 1",
    );
    assert!(
        !ok && err.contains("database \"nosuch\" does not exist"),
        "{err}"
    );

    // The superuser adds a user; that user may change their own password and nothing else.
    let admin = "dbname=postgres user=admin";
    let (ok, _, err) = psql(
        &server,
        admin,
        Some("Adm1n pass"),
        "CREATE USER reader PASSWORD 'read one'",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = psql(
        &server,
        "dbname=postgres user=reader",
        Some("read one"),
        "CREATE USER sneaky PASSWORD 'x'",
    );
    assert!(!ok && err.contains("permission denied"), "{err}");
    let (ok, _, err) = psql(
        &server,
        "dbname=postgres user=reader",
        Some("read one"),
        "ALTER USER reader WITH PASSWORD 'read two'",
    );
    assert!(ok, "{err}");

    // The password never reaches the disk or the query log in clear. (The passwords have
    // spaces, which base64 salts and hashes do not: "r2" once turned up in a hash.)
    let auth = std::fs::read_to_string(server.data_dir.path().join("auth.json")).unwrap();
    assert!(
        !auth.contains("Adm1n") && !auth.contains("read two"),
        "{auth}"
    );
    let (ok, out, err) = psql(
        &server,
        admin,
        Some("Adm1n pass"),
        "SELECT query FROM system.queries",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("CREATE USER reader") && !out.contains("read one"),
        "{out}"
    );

    // asyncpg and psycopg: the SQLSTATE of a wrong password is 28P01; the right one works.
    let script = r#"
import sys, asyncio, asyncpg, psycopg
host, port = sys.argv[1], int(sys.argv[2])
async def main():
    try:
        await asyncpg.connect(host=host, port=port, user="reader", password="read one", database="postgres")
        print("wrong password accepted")
    except asyncpg.exceptions.InvalidPasswordError as e:
        print(e.sqlstate)
    conn = await asyncpg.connect(host=host, port=port, user="reader", password="read two", database="postgres")
    print(await conn.fetchval("SELECT 7"))
    await conn.close()
asyncio.run(main())
with psycopg.connect(host=host, port=port, user="reader", password="read two", dbname="postgres") as conn:
    print(conn.execute("SELECT 'psycopg'").fetchone()[0])
"#;
    let out = run_python(
        script,
        &[&server.pg.ip().to_string(), &server.pg.port().to_string()],
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["28P01", "7", "psycopg"]
    );

    // A login that fails ends the connection: what the client sends after it is not run,
    // even though the start-up named a superuser.
    let script = r#"
import sys, socket, struct
host, port = sys.argv[1], int(sys.argv[2])
def message(kind, body):
    return kind + struct.pack("!I", len(body) + 4) + body
s = socket.create_connection((host, port))
params = b"user\0admin\0database\0postgres\0\0"
s.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
s.recv(4096)  # AuthenticationSASL
mechanism = b"NOT-A-MECHANISM\0" + struct.pack("!i", -1)
s.sendall(message(b"p", mechanism))
s.sendall(message(b"Q", b"CREATE USER evil WITH PASSWORD 'x' SUPERUSER\0"))
s.settimeout(5)
received = b""
try:
    while chunk := s.recv(4096):
        received += chunk
except OSError:
    pass
print("closed", b"CREATE ROLE" not in received)
"#;
    let out = run_python(
        script,
        &[&server.pg.ip().to_string(), &server.pg.port().to_string()],
    );
    assert_eq!(out.trim(), "closed True");
    let (ok, out, err) = psql(&server, admin, Some("Adm1n pass"), "SELECT 1");
    assert!(ok, "{out}{err}");
    let users = std::fs::read_to_string(server.data_dir.path().join("auth.json")).unwrap();
    assert!(!users.contains("evil"), "{users}");

    // Only a superuser writes files on the server with COPY.
    let target = server.data_dir.path().join("copied.csv");
    let copy = format!("COPY (SELECT 1 AS one) TO '{}'", target.display());
    let (ok, _, err) = psql(
        &server,
        "dbname=postgres user=reader",
        Some("read two"),
        &copy,
    );
    assert!(
        !ok && err.contains("only a superuser may COPY to a file"),
        "{err}"
    );
    assert!(!target.exists());

    // Users added with the command line apply to the running server at once.
    gannet(
        server.data_dir.path(),
        &["user", "add", "cli"],
        "from the cli\n",
    );
    let (ok, _, err) = psql(
        &server,
        "dbname=postgres user=cli",
        Some("from the cli"),
        "SELECT 1",
    );
    assert!(ok, "{err}");
    let listed = gannet(server.data_dir.path(), &["user", "list"], "");
    assert!(
        listed.contains("admin\tsuperuser") && listed.contains("cli\tuser"),
        "{listed}"
    );
}

#[test]
fn http_tokens_are_checked_by_scope() {
    let server = TestServer::start();
    // No token yet: loopback is open.
    assert_eq!(server.write("m", b"cpu,host=a usage=1 1700000000").0, 204);

    let dir = server.data_dir.path();
    let token = |name: &str, scope: &str| {
        gannet(dir, &["token", "create", name, "--scope", scope], "")
            .trim()
            .to_owned()
    };
    let (read, write, admin) = (token("r", "read"), token("w", "write"), token("a", "admin"));
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let line = b"cpu,host=b usage=2 1700000001";
    let write_path = "/api/v3/write_lp?db=m&precision=s";
    let count = || {
        let (status, body) = server.curl(
            "GET",
            "/api/v3/query_sql?db=m&q=SELECT%20count(*)%20AS%20n%20FROM%20cpu&format=csv",
            &[&bearer(&read)],
            None,
        );
        assert_eq!(status, 200);
        String::from_utf8(body).unwrap()
    };

    // Refused: no token, an unknown one, a read token writing, a write token reading.
    assert_eq!(server.curl("POST", write_path, &[], Some(line)).0, 401);
    assert_eq!(
        server
            .curl("POST", write_path, &[&bearer("gannet_nope")], Some(line))
            .0,
        401
    );
    let (status, body) = server.curl("POST", write_path, &[&bearer(&read)], Some(line));
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("needs a write token"));
    assert_eq!(count(), "n\n1\n", "a refused write wrote nothing");
    let (status, _) = server.curl(
        "GET",
        "/api/v3/query_sql?db=m&q=SELECT%201",
        &[&bearer(&write)],
        None,
    );
    assert_eq!(status, 403);
    // A read token queries but does not write through SQL; an admin token may.
    for sql in [
        "INSERT INTO cpu (time, host, usage) VALUES (now(), 'sql', 9)",
        "CREATE DATABASE other",
        "COPY (SELECT 1) TO '/tmp/gannet-read-token.csv'",
        "DELETE FROM cpu",
    ] {
        let path = format!(
            "/api/v3/query_sql?db=m&q={}",
            sql.replace(' ', "%20")
                .replace('\'', "%27")
                .replace(',', "%2C")
        );
        let (status, body) = server.curl("GET", &path, &[&bearer(&read)], None);
        assert_eq!(status, 403, "{sql}: {}", String::from_utf8_lossy(&body));
    }
    assert!(!Path::new("/tmp/gannet-read-token.csv").exists());
    assert_eq!(count(), "n\n1\n", "a read token wrote nothing");
    let model = b"not an onnx model";
    let (status, _) = server.curl("PUT", "/api/v1/models/x", &[&bearer(&read)], Some(model));
    assert_eq!(status, 403);
    assert_eq!(server.curl("GET", "/metrics", &[], None).0, 401);

    // Allowed: liveness without a token, writes with write or admin tokens in every form
    // InfluxDB clients send them, queries and metrics with read tokens.
    assert_eq!(server.curl("GET", "/health", &[], None).0, 200);
    assert_eq!(
        server
            .curl("POST", write_path, &[&bearer(&write)], Some(line))
            .0,
        204
    );
    let token_header = format!("Authorization: Token {admin}");
    let v1 = "/write?db=m&precision=s";
    assert_eq!(
        server
            .curl(
                "POST",
                v1,
                &[&token_header],
                Some(b"cpu,host=c usage=3 1700000002")
            )
            .0,
        204
    );
    let basic = {
        use base64::Engine as _;
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("me:{write}"));
        format!("Authorization: Basic {credentials}")
    };
    assert_eq!(
        server
            .curl(
                "POST",
                v1,
                &[&basic],
                Some(b"cpu,host=c2 usage=3 1700000002")
            )
            .0,
        204
    );
    let (status, _) = curl(
        "POST",
        &server.url(&format!("/write?db=m&precision=s&u=x&p={write}")),
        &[],
        Some(b"cpu,host=d usage=4 1700000003"),
    );
    assert_eq!(status, 204);
    let script = r#"
import sys
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
with InfluxDBClient(url=sys.argv[1], token=sys.argv[2], org="unused") as client:
    client.write_api(write_options=SYNCHRONOUS).write(
        bucket="m", record="cpu,host=e usage=5 1700000004000000000")
print("ok")
"#;
    assert_eq!(run_python(script, &[&server.url(""), &write]).trim(), "ok");
    assert_eq!(count(), "n\n6\n");
    let insert = "/api/v3/query_sql?db=m&q=INSERT%20INTO%20cpu%20(time%2C%20host%2C%20usage)%20VALUES%20(now()%2C%20%27sql%27%2C%209)";
    let (status, body) = server.curl("GET", insert, &[&bearer(&admin)], None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(count(), "n\n7\n");
    assert_eq!(
        server.curl("GET", "/metrics", &[&bearer(&read)], None).0,
        200
    );

    // A revoked token stops working at once.
    gannet(dir, &["token", "revoke", "w"], "");
    assert_eq!(
        server
            .curl("POST", write_path, &[&bearer(&write)], Some(line))
            .0,
        401
    );
    let stored = std::fs::read_to_string(dir.join("auth.json")).unwrap();
    assert!(
        !stored.contains(&read) && !stored.contains(&admin),
        "{stored}"
    );
}

/// A CA and a certificate it signed for localhost and 127.0.0.1, made with openssl.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=gannet test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"],
            &ec[..],
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[test]
fn tls_on_both_listeners() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(certs.path());
    let server = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(server.log().contains("(TLS)"), "{}", server.log());

    // psql: sslmode=require encrypts; verify-full also checks the certificate and the name.
    let (ok, out, err) = psql(
        &server,
        "dbname=postgres user=u sslmode=require",
        None,
        "SELECT 1",
    );
    assert!(ok && out.trim() == "1", "{err}");
    let full = format!(
        "host=localhost hostaddr=127.0.0.1 port={} dbname=postgres user=u sslmode=verify-full sslrootcert={}",
        server.pg.port(),
        ca.display()
    );
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-w",
            "-d",
            &full,
            "-c",
            "SELECT 2",
            "-c",
            "\\conninfo",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SSL connection"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A certificate the client does not trust is refused.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = certificates(other.path());
    let untrusted = full.replace(&ca.display().to_string(), &other_ca.display().to_string());
    let out = Command::new("psql")
        .args(["-X", "-w", "-d", &untrusted, "-c", "SELECT 3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate verify failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // HTTP is https, checked against the CA by curl.
    let port = server.http.port();
    let out = Command::new("curl")
        .args(["-s", "-S", "--cacert"])
        .arg(&ca)
        .args([
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            &format!("https://localhost:{port}/health"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain http to the TLS port gets nowhere.
    let plain = Command::new("curl")
        .args([
            "-s",
            "-S",
            "-m",
            "5",
            &format!("http://127.0.0.1:{port}/health"),
        ])
        .output()
        .unwrap();
    assert!(!plain.status.success());
}

#[test]
fn off_loopback_it_starts_only_with_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let start = |pg: &str, http: &str| {
        Command::new(env!("CARGO_BIN_EXE_gannet"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--pg-addr", pg, "--http-addr", http])
            .output()
            .unwrap()
    };
    let out = start("0.0.0.0:0", "127.0.0.1:0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("gannet user add"),
        "{err}"
    );
    let out = start("127.0.0.1:0", "0.0.0.0:0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("gannet token create"),
        "{err}"
    );

    // With a user and a token it starts on any address.
    gannet(dir.path(), &["user", "add", "ops", "--superuser"], "pw\n");
    gannet(
        dir.path(),
        &["token", "create", "ops", "--scope", "admin"],
        "",
    );
    let server = TestServer::start_in(dir, &["--pg-addr", "0.0.0.0:0", "--http-addr", "0.0.0.0:0"]);
    assert_eq!(
        server
            .curl("GET", "/api/v3/query_sql?db=m&q=SELECT%201", &[], None)
            .0,
        401
    );
}
