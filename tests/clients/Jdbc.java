// The PostgreSQL JDBC driver (Debian's libpostgresql-jdbc-java) against Gannet: start-up,
// metadata, prepared statements (server-side after five runs), types. Prints "ok".
//
//     java -cp /usr/share/java/postgresql.jar tests/clients/Jdbc.java jdbc:postgresql://HOST:PORT/m

import java.sql.*;
import java.util.*;

public class Jdbc {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", "test");
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            DatabaseMetaData meta = conn.getMetaData();
            check(meta.getDatabaseProductName().equals("PostgreSQL"), meta.getDatabaseProductName());

            List<String> tables = new ArrayList<>();
            try (ResultSet rs = meta.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            }
            check(tables.equals(List.of("cpu")), "tables " + tables);

            Map<String, String> columns = new TreeMap<>();
            try (ResultSet rs = meta.getColumns(null, "public", "cpu", "%")) {
                while (rs.next()) columns.put(rs.getString("COLUMN_NAME"), rs.getString("TYPE_NAME"));
            }
            check(columns.get("usage").equals("float8") && columns.get("host").equals("text")
                    && columns.get("time").equals("timestamp"), "columns " + columns);

            // Ten runs: the driver switches to a named server-side statement after five.
            String sql = "SELECT host, usage, time FROM cpu WHERE host = ? AND usage > ? ORDER BY time";
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                for (int i = 0; i < 10; i++) {
                    ps.setString(1, "b");
                    ps.setDouble(2, 2.0);
                    List<String> rows = new ArrayList<>();
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            rows.add(rs.getString(1) + "|" + rs.getDouble(2) + "|"
                                    + rs.getTimestamp(3).toInstant());
                        }
                    }
                    check(rows.equals(List.of("b|2.25|2023-11-14T22:13:20Z", "b|3.125|2023-11-14T22:13:30Z")),
                            "run " + i + ": " + rows);
                }
            }
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery("SELECT count(*), max(cores) FROM cpu")) {
                check(rs.next() && rs.getLong(1) == 6 && rs.getLong(2) == 8, "aggregate");
            }
            try (Statement st = conn.createStatement()) {
                st.executeQuery("SELECT * FROM no_such_table");
                check(false, "no error for an unknown table");
            } catch (SQLException e) {
                check("42P01".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
            }
        }
        System.out.println("ok");
    }
}
