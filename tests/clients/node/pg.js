// node-postgres against Gannet: start-up, parameterised queries (extended protocol),
// named prepared statements, types, errors. Prints "ok".
//
//     node tests/clients/node/pg.js postgresql://test@HOST:PORT/m

const assert = require("node:assert/strict");
const { Client } = require("pg");

async function main() {
  const client = new Client({ connectionString: process.argv[2] });
  await client.connect();

  const { rows } = await client.query(
    "SELECT host, usage, cores, ok, time FROM cpu WHERE host = $1 ORDER BY time",
    ["a"],
  );
  assert.deepEqual(
    rows.map((r) => [r.host, r.usage, r.cores, r.ok, r.time.toISOString()]),
    [
      ["a", 0.5, "4", true, "2023-11-14T22:13:20.000Z"],
      ["a", 1.5, "4", false, "2023-11-14T22:13:30.000Z"],
    ],
  );

  // A named statement, parsed once and run with different values.
  for (const [min, count] of [[0, "6"], [1, "3"], [3, "1"]]) {
    const result = await client.query({
      name: "above",
      text: "SELECT count(*) AS n FROM cpu WHERE usage > $1",
      values: [min],
    });
    assert.equal(result.rows[0].n, count);
  }

  const version = await client.query("SELECT version()");
  assert.match(version.rows[0].version, /^PostgreSQL 16/);

  await assert.rejects(client.query("SELECT * FROM no_such_table"), (e) => e.code === "42P01");
  // The connection stays usable after an error.
  // (1 is a bigint in DataFusion, which node-postgres gives as a string.)
  assert.equal((await client.query("SELECT 1 AS one")).rows[0].one, "1");

  await client.end();
  console.log("ok");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
