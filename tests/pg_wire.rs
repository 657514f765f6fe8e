//! The Postgres wire protocol with the real clients: psql, psycopg 3, asyncpg.

use crate::support::{TestServer, run_python};

/// A server holding `cpu` in database `m`: three hosts, two points each.
fn server_with_cpu() -> TestServer {
    let server = TestServer::start();
    let body = b"cpu,host=a,region=eu usage=0.5,cores=4i,ok=true 1700000000000000000\n\
                 cpu,host=a,region=eu usage=1.5,cores=4i,ok=false 1700000010000000000\n\
                 cpu,host=b,region=us usage=2.25,cores=8i 1700000000000000000\n\
                 cpu,host=b,region=us usage=3.125,cores=8i 1700000010000000000\n\
                 cpu,host=c,region=us usage=0.1 1700000000123456789\n\
                 cpu,host=c,region=us usage=0.30000000000000004 1700000010000000000\n";
    let (status, out) = server.curl("POST", "/api/v3/write_lp?db=m", &[], Some(body));
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&out));
    server
}

#[test]
fn psql_lists_describes_and_queries() {
    let server = server_with_cpu();
    let (ok, out, err) = server.psql("m", &["-c", r"\dt"]);
    assert!(ok, "{err}");
    assert!(out.contains(" public | cpu  | table |"), "{out}");

    let (ok, out, err) = server.psql("m", &["-c", r"\d cpu"]);
    assert!(ok, "{err}");
    for line in [
        " host   | text                        |",
        " cores  | bigint                      |",
        " ok     | boolean                     |",
        " usage  | double precision            |",
        " time   | timestamp without time zone |",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }

    let (ok, out, err) = server.psql("m", &["-c", r"\l"]);
    assert!(ok, "{err}");
    assert!(out.contains(" m "), "{out}");
    let (ok, _, err) = server.psql("m", &["-c", r"\dn"]);
    assert!(ok, "{err}");

    let (ok, out, err) = server.psql(
        "m",
        &[
            "-A",
            "-c",
            "SELECT host, max(usage) AS top, min(time) AS first FROM cpu GROUP BY host ORDER BY host",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "host|top|first\n\
         a|1.5|2023-11-14 22:13:20.000000\n\
         b|3.125|2023-11-14 22:13:20.000000\n\
         c|0.30000000000000004|2023-11-14 22:13:20.123456\n\
         (3 rows)\n"
    );
}

#[test]
fn errors_carry_sqlstates_and_the_connection_stays_usable() {
    let server = server_with_cpu();
    // One psql session: each failing statement reports its SQLSTATE, the next still runs.
    let (_, out, err) = server.psql(
        "m",
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "SELECT * FROM nope",
            "-c",
            "SELECT nope FROM cpu",
            "-c",
            "SELEC 1",
            "-c",
            "SELECT 1/0",
            "-c",
            "SELECT count(*) AS n FROM cpu",
        ],
    );
    for expected in [
        "ERROR:  42P01: relation \"nope\" does not exist",
        "ERROR:  42703:",
        "ERROR:  42601:",
        "ERROR:  22012: division by zero",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
    }
    assert!(out.contains("\n 6\n"), "{out}");

    let (ok, _, err) = server.psql("absent", &["-c", "SELECT 1"]);
    assert!(!ok);
    assert!(
        err.contains("FATAL:  database \"absent\" does not exist"),
        "{err}"
    );

    // `postgres` always exists, as in PostgreSQL; Grafana's health check is a comment.
    let (ok, _, err) = server.psql("postgres", &["-c", "-- ping", "-c", "SELECT 1"]);
    assert!(ok, "{err}");
}

#[test]
fn psycopg_text_and_binary() {
    let server = server_with_cpu();
    let script = r#"
import sys, datetime, psycopg
from psycopg import errors
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        cur.execute("SELECT host, usage, cores, ok, time FROM cpu WHERE host = %s AND usage > %s ORDER BY time", ("a", 0.0))
        rows = cur.fetchall()
        assert rows == [
            ("a", 0.5, 4, True, datetime.datetime(2023, 11, 14, 22, 13, 20)),
            ("a", 1.5, 4, False, datetime.datetime(2023, 11, 14, 22, 13, 30)),
        ], rows
        cur.execute("SELECT usage, time FROM cpu WHERE host = 'c' ORDER BY time")
        rows = cur.fetchall()
        # Floats round-trip exactly; timestamps keep their microseconds.
        assert rows[0] == (0.1, datetime.datetime(2023, 11, 14, 22, 13, 20, 123456)), rows
        assert rows[1][0] == 0.30000000000000004, rows
    try:
        conn.execute("SELECT * FROM nope")
        raise SystemExit("no error")
    except errors.UndefinedTable as e:
        assert e.sqlstate == "42P01"
    try:
        conn.execute("SELECT nope FROM cpu")
        raise SystemExit("no error")
    except errors.UndefinedColumn:
        pass
    for stmt in ("BEGIN", "COMMIT", "BEGIN", "ROLLBACK", "SET application_name = 'test'", "SET extra_float_digits = 3", "SHOW TimeZone"):
        conn.execute(stmt)
    assert conn.execute("SELECT count(*) FROM cpu").fetchone() == (6,)
print("ok")
"#;
    assert_eq!(run_python(script, &[&server.dsn("m")]).trim(), "ok");
}

#[test]
fn asyncpg_prepared_statements() {
    let server = server_with_cpu();
    let script = r#"
import sys, asyncio, datetime, asyncpg
async def main():
    conn = await asyncpg.connect(host=sys.argv[1], port=int(sys.argv[2]), database="m", user="test")
    stmt = await conn.prepare("SELECT host, usage, time FROM cpu WHERE usage > $1 ORDER BY usage DESC")
    rows = await stmt.fetch(2.0)
    assert [tuple(r) for r in rows] == [
        ("b", 3.125, datetime.datetime(2023, 11, 14, 22, 13, 30)),
        ("b", 2.25, datetime.datetime(2023, 11, 14, 22, 13, 20)),
    ], rows
    assert await stmt.fetch(100.0) == []
    n = await conn.fetchval("SELECT count(*) FROM cpu WHERE region = $1", "us")
    assert n == 4, n
    try:
        await conn.fetch("SELECT * FROM nope")
        raise SystemExit("no error")
    except asyncpg.exceptions.UndefinedTableError:
        pass
    assert await conn.fetchval("SELECT max(cores) FROM cpu") == 8
    # Constant statements are planned once and run from the kept plan; now() is not one.
    one = await conn.prepare("SELECT 1 AS one, 'x' || 'y' AS xy, 2.5::float8 * 2 AS f")
    for _ in range(3):
        assert tuple(await one.fetchrow()) == (1, "xy", 5.0)
    clock = await conn.prepare("SELECT now() AS t")
    first = await clock.fetchval()
    await asyncio.sleep(0.01)
    assert await clock.fetchval() > first
    await conn.close()
asyncio.run(main())
print("ok")
"#;
    let port = server.pg.port().to_string();
    let out = run_python(script, &[&server.pg.ip().to_string(), &port]);
    assert_eq!(out.trim(), "ok");
}

#[test]
fn grafana_queries_through_the_simple_protocol() {
    let server = server_with_cpu();
    // Grafana's PostgreSQL data source: version probe, table and column listing, and a
    // macro-expanded time-series panel query, sent verbatim.
    let queries = [
        "SELECT current_setting('server_version_num')::int/100 as version",
        "select quote_ident(table_name) as \"table\" from information_schema.tables \
         where quote_ident(table_schema) not in ('information_schema', 'pg_catalog', '_timescaledb_cache', \
         '_timescaledb_catalog', '_timescaledb_internal', '_timescaledb_config', 'timescaledb_information', \
         'timescaledb_experimental') and table_type = 'BASE TABLE' and quote_ident(table_schema) IN ( \
         SELECT CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END FROM \
         generate_series(array_lower(string_to_array(current_setting('search_path'),','),1), \
         array_upper(string_to_array(current_setting('search_path'),','),1)) as i, \
         string_to_array(current_setting('search_path'),',') s)",
        "select quote_ident(column_name) as \"column\", data_type as \"type\" from information_schema.columns \
         where quote_ident(table_name) = 'cpu'",
        "SELECT floor(extract(epoch from time)/60)*60 AS \"time\", avg(usage) AS usage FROM cpu \
         WHERE time BETWEEN '2023-11-14T22:00:00Z' AND '2023-11-14T23:00:00Z' GROUP BY 1 ORDER BY 1",
    ];
    let mut args = vec!["-A", "-t"];
    for q in &queries {
        args.extend(["-c", q]);
    }
    let (ok, out, err) = server.psql("m", &args);
    assert!(ok && err.is_empty(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1600", "{out}");
    assert!(lines.contains(&"cpu"), "{out}");
    // The column listing names PostgreSQL's types, as for a PostgreSQL table.
    for column in [
        "host|text",
        "usage|double precision",
        "cores|bigint",
        "ok|boolean",
        "time|timestamp without time zone",
    ] {
        assert!(lines.contains(&column), "{column} missing from:\n{out}");
    }
    // 22:13:20 and 22:13:30 fall in the minute that starts at 1699999980.
    assert_eq!(
        lines.last().unwrap(),
        &"1699999980.0|1.2958333333333332",
        "{out}"
    );
}

#[test]
fn cancel_requests_and_statement_timeouts_stop_running_queries() {
    let server = TestServer::start();
    // A query that would run for minutes: its rows are computed while they stream out.
    let script = r#"
import sys, threading, time, psycopg
from psycopg import errors
slow = "SELECT count(*) FROM generate_series(1, 100000000000)"
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    threading.Timer(0.5, conn.cancel_safe).start()
    started = time.monotonic()
    try:
        conn.execute(slow)
        raise SystemExit("not cancelled")
    except errors.QueryCanceled as e:
        assert e.sqlstate == "57014" and "user request" in str(e), e
    assert time.monotonic() - started < 30
    assert conn.execute("SELECT 1").fetchone() == (1,)

    conn.execute("SET statement_timeout = 300")
    for binary in (False, True):
        try:
            conn.cursor(binary=binary).execute(slow + " WHERE %s", (True,))
            raise SystemExit("no timeout")
        except errors.QueryCanceled as e:
            assert "statement timeout" in str(e), e
    conn.execute("SET statement_timeout = 0")
    assert conn.execute("SELECT 2").fetchone() == (2,)
print("ok")
"#;
    assert_eq!(run_python(script, &[&server.dsn("postgres")]).trim(), "ok");
}

#[test]
fn sqlalchemy_lists_tables_and_runs_core_queries() {
    let server = server_with_cpu();
    let script = r#"
import sys, sqlalchemy as sa
engine = sa.create_engine(f"postgresql+psycopg://test@{sys.argv[1]}/m")
inspector = sa.inspect(engine)
assert inspector.get_table_names() == ["cpu"]
assert inspector.get_pk_constraint("cpu")["constrained_columns"] == []
assert inspector.get_indexes("cpu") == [] and inspector.get_foreign_keys("cpu") == []
# Reflection: the table's columns with their PostgreSQL types, as a Table to query.
cpu = sa.Table("cpu", sa.MetaData(), autoload_with=engine)
types = {c.name: (type(c.type).__name__, c.nullable) for c in cpu.columns}
assert types == {
    "cores": ("BIGINT", True),
    "host": ("TEXT", True),
    "ok": ("BOOLEAN", True),
    "region": ("TEXT", True),
    "usage": ("DOUBLE_PRECISION", True),
    "time": ("TIMESTAMP", False),
}, types
query = (
    sa.select(cpu.c.host, sa.func.max(cpu.c.usage).label("top"))
    .where(cpu.c.usage > 0.2)
    .group_by(cpu.c.host)
    .order_by(cpu.c.host)
)
with engine.connect() as conn:
    rows = [tuple(r) for r in conn.execute(query)]
    assert rows == [("a", 1.5), ("b", 3.125), ("c", 0.30000000000000004)], rows
    conn.rollback()
print("ok")
"#;
    assert_eq!(run_python(script, &[&server.pg.to_string()]).trim(), "ok");
}

#[test]
fn subqueries_over_gannet_tables_answer_as_in_postgres() {
    // Correlated scalar subqueries in a projection, qualified by table name and by alias,
    // in both protocols: datafusion-pg-catalog's parser would make them NULL.
    let server = server_with_cpu();
    let by_name = "SELECT host, (SELECT max(c2.usage) FROM cpu c2 WHERE c2.host = cpu.host) AS top \
                   FROM cpu WHERE usage < 1 ORDER BY host, usage";
    let by_alias = "SELECT c1.host, (SELECT count(*) FROM cpu c2 WHERE c2.region = c1.region) AS n \
                    FROM cpu c1 WHERE c1.host = 'b' ORDER BY 1, 2";
    let (ok, out, err) = server.psql("m", &["-A", "-t", "-c", by_name, "-c", by_alias]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "a|1.5\nc|0.30000000000000004\nc|0.30000000000000004\nb|4\nb|4\n"
    );
    let script = format!(
        r#"
import sys, psycopg
with psycopg.connect(sys.argv[1]) as conn:
    rows = conn.execute("{by_alias} LIMIT %s", (1,)).fetchall()
    assert rows == [("b", 4)], rows
print("ok")
"#
    );
    assert_eq!(run_python(&script, &[&server.dsn("m")]).trim(), "ok");
}

#[test]
fn settings_belong_to_the_connection_that_sets_them() {
    let server = server_with_cpu();
    let script = r#"
import sys, psycopg
from psycopg import errors
a = psycopg.connect(sys.argv[1], autocommit=True)
b = psycopg.connect(sys.argv[1], autocommit=True)
a.execute("SET datafusion.execution.batch_size = 7")
show = "SHOW datafusion.execution.batch_size"
assert a.execute(show).fetchall() == [("datafusion.execution.batch_size", "7")]
assert b.execute(show).fetchall() == [("datafusion.execution.batch_size", "8192")]
# Queries on the connection run with its settings, parameters bound as before.
rows = a.execute("SELECT host, max(usage) FROM cpu WHERE usage > %s GROUP BY host ORDER BY host", (1.0,))
assert rows.fetchall() == [("a", 1.5), ("b", 3.125)]
for bad, code in [("SET datafusion.execution.no_such_option = 1", "42704"),
                  ("SET datafusion.execution.batch_size = 'many'", "22023"),
                  ("SHOW no_such_setting", "42704")]:
    try:
        a.execute(bad)
        raise SystemExit(f"no error from {bad}")
    except psycopg.Error as e:
        assert e.sqlstate == code, (bad, e.sqlstate, e)
assert a.execute(show).fetchall() == [("datafusion.execution.batch_size", "7")]
# PostgreSQL's settings: the server's values, or what the connection set.
assert a.execute("SHOW TimeZone").fetchall() == [("UTC",)]
assert a.execute("SHOW server_version").fetchall() == [("16.6",)]
a.execute("SET statement_timeout = 5000")
assert a.execute("SHOW statement_timeout").fetchall() == [("5000ms",)]
assert b.execute("SHOW statement_timeout").fetchall() == [("0",)]
# A time zone set either way is the connection's, not the database's session's (a
# connection that has set nothing else runs in that session itself).
zone = "SHOW datafusion.execution.time_zone"
before = b.execute(zone).fetchall()
c = psycopg.connect(sys.argv[1], autocommit=True)
c.execute("SET timezone = '+05:00'")
c.execute("SET TIME ZONE '+06:00'")
assert b.execute(zone).fetchall() == before, b.execute(zone).fetchall()
print("ok")
"#;
    assert_eq!(run_python(script, &[&server.dsn("m")]).trim(), "ok");
    // The simple protocol too.
    let (ok, out, err) = server.psql(
        "m",
        &[
            "-A",
            "-t",
            "-c",
            "SET datafusion.execution.batch_size = 3",
            "-c",
            "SHOW datafusion.execution.batch_size",
            "-c",
            "SHOW DateStyle",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "SET\ndatafusion.execution.batch_size|3\nISO, MDY\n");
}

/// Runs a client program (its last argument the server's address, as the program wants
/// it) and checks that it printed "ok".
fn run_client(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup installs the clients)"));
    assert!(
        out.status.success() && out.stdout.starts_with(b"ok"),
        "{program} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn jdbc_reads_metadata_and_runs_prepared_statements() {
    let server = server_with_cpu();
    let url = format!("jdbc:postgresql://{}/m", server.pg);
    run_client(
        "java",
        &[
            "-cp",
            "/usr/share/java/postgresql.jar",
            "tests/clients/Jdbc.java",
            &url,
        ],
    );
}

#[test]
fn node_postgres_runs_parameterised_and_named_statements() {
    let server = server_with_cpu();
    let url = format!("postgresql://test@{}/m", server.pg);
    run_client("node", &["tests/clients/node/pg.js", &url]);
}

#[test]
fn create_database_insert_and_delete_through_psql() {
    let server = TestServer::start();
    let (ok, out, err) = server.psql("postgres", &["-c", "CREATE DATABASE sensors"]);
    assert!(ok, "{err}");
    assert_eq!(out, "CREATE DATABASE\n");
    let (_, _, err) = server.psql(
        "postgres",
        &["-v", "VERBOSITY=verbose", "-c", "CREATE DATABASE sensors"],
    );
    assert!(err.contains("42P04"), "{err}");

    // INSERT needs the table: the first line-protocol write creates it.
    let (status, _) = server.curl(
        "POST",
        "/api/v3/write_lp?db=sensors",
        &[],
        Some(b"air,room=hall temp=20 1700000000000000000"),
    );
    assert_eq!(status, 204);
    let (ok, out, err) = server.psql(
        "sensors",
        &[
            "-c",
            "INSERT INTO air (time, room, temp) VALUES ('2023-11-14 22:13:30', 'hall', 21.5), \
             ('2023-11-14 22:13:30', 'attic', 30)",
            "-c",
            "DELETE FROM air WHERE room = 'attic'",
            "-A",
            "-t",
            "-c",
            "SELECT room, temp FROM air ORDER BY time",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("INSERT 0 2\n"), "{out}");
    assert!(out.ends_with("hall|20.0\nhall|21.5\n"), "{out}");

    // DROP TABLE in the connection's database, with PostgreSQL's tag and errors.
    let (ok, out, err) = server.psql("sensors", &["-c", "DROP TABLE air"]);
    assert!(ok, "{err}");
    assert_eq!(out, "DROP TABLE\n");
    let (ok, _, err) = server.psql(
        "sensors",
        &["-v", "VERBOSITY=verbose", "-c", "DROP TABLE air"],
    );
    assert!(!ok && err.contains("42P01"), "{err}");
}

#[test]
fn system_tables_over_psql_log_the_queries_sent() {
    let server = server_with_cpu();
    let (ok, _, err) = server.psql(
        "m",
        &[
            "-c",
            "SELECT count(*) FROM cpu WHERE host = 'a'",
            "-c",
            "SELECT nope FROM cpu",
        ],
    );
    assert!(!ok && err.contains("nope"), "{err}");
    let (ok, out, err) = server.psql(
        "m",
        &[
            "-A",
            "-t",
            "-c",
            "SELECT database, query, rows, status FROM system.queries \
             WHERE query LIKE 'SELECT % FROM cpu%' ORDER BY started",
            "-c",
            "SELECT table_name, segments FROM system.tables",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "m|SELECT count(*) FROM cpu WHERE host = 'a'|1|ok\n\
         m|SELECT nope FROM cpu||error\n\
         cpu|0\n"
    );
}

/// A frontend message: its type byte, length and body.
fn frontend(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut message = vec![kind];
    message.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    message.extend_from_slice(body);
    message
}

/// What the server sends within `wait`, or until a message of type `last` arrives (the
/// replies here are a few bytes: they arrive whole).
fn read_for(stream: &mut std::net::TcpStream, wait: std::time::Duration, last: u8) -> Vec<u8> {
    use std::io::Read;
    let until = std::time::Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        if crate::hostile::message_types(&got).last() == Some(&last) {
            break;
        }
        stream
            .set_read_timeout(Some(left.max(std::time::Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    got
}

#[test]
fn extended_protocol_replies_wait_for_sync_or_flush_as_postgresql_does() {
    use std::io::Write;
    use std::time::Duration;

    use crate::hostile::{message_types, startup};

    let server = TestServer::start();
    let mut stream = std::net::TcpStream::connect(server.pg).unwrap();
    stream.write_all(&startup("tester", "postgres")).unwrap();
    let greeting = read_for(&mut stream, Duration::from_secs(10), b'Z');
    assert_eq!(message_types(&greeting).last(), Some(&b'Z'), "{greeting:?}");

    // Parse, Bind, Execute: nothing is sent until the client asks.
    let mut batch = frontend(b'P', b"\0SELECT 41 + 1\0\0\0");
    batch.extend(frontend(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(frontend(b'E', b"\0\0\0\0\0"));
    stream.write_all(&batch).unwrap();
    let early = read_for(&mut stream, Duration::from_millis(300), b'C');
    assert!(early.is_empty(), "replied before Sync or Flush: {early:?}");

    // Flush: the replies so far, without ReadyForQuery.
    stream.write_all(&frontend(b'H', b"")).unwrap();
    let flushed = read_for(&mut stream, Duration::from_secs(10), b'C');
    assert_eq!(message_types(&flushed), b"12DC", "{flushed:?}");
    assert!(flushed.windows(2).any(|w| w == b"42"), "{flushed:?}");

    // Sync: ReadyForQuery.
    stream.write_all(&frontend(b'S', b"")).unwrap();
    let synced = read_for(&mut stream, Duration::from_secs(10), b'Z');
    assert_eq!(message_types(&synced), b"Z", "{synced:?}");

    // A simple query's reply comes whole, without a Flush.
    stream
        .write_all(&frontend(b'Q', b"SELECT 'simple'\0"))
        .unwrap();
    let simple = read_for(&mut stream, Duration::from_secs(10), b'Z');
    assert_eq!(message_types(&simple), b"TDCZ", "{simple:?}");
}
