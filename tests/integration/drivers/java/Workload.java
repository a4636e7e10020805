// The driver tier's workload in pgjdbc (see tests/integration/drivers/workload.py).
//
// Usage: java -cp /usr/share/java/postgresql.jar Workload.java SHOP TAG MAX_CUSTOMER
// (single-file source launch; connection from PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD;
// MAX_CUSTOMER: the sample's largest customer id, the customers all_shops counts)
// Prints {"driver": "pgjdbc", "shop": SHOP, "steps": [...]} on stdout.
//
// JDBC's idiom: PreparedStatement with setLong/setInt/setBigDecimal, executeQuery for RETURNING,
// executeUpdate counts, conn.setAutoCommit(false) + commit()/rollback() for transactions (pgjdbc sends
// BEGIN together with the first statement), conn.setSavepoint()/rollback(sp), addBatch/executeBatch,
// a server-side prepared statement (prepareThreshold 1), and COPY through CopyManager in CSV.

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Types;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public class Workload {
    static final long MISSING_CUSTOMER = 2147483647L;
    static final String SELECT_REPAIR =
        "SELECT id, customer_id, device_model_id, status, price FROM repairs WHERE id = ?";
    static final List<String> steps = new ArrayList<>();

    interface Action { Object run() throws SQLException; }

    static final class Rows {
        final List<List<Object>> rows;
        Rows(List<List<Object>> rows) { this.rows = rows; }
        Object first() { return rows.isEmpty() ? null : rows.get(0).get(0); }
    }

    static final class Ok { }

    static String json(Object v) {
        if (v == null) return "null";
        if (v instanceof Number && !(v instanceof BigDecimal)) return v.toString();
        if (v instanceof Boolean) return v.toString();
        String s = v.toString();
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20) b.append(String.format("\\u%04x", (int) c)); else b.append(c);
            }
        }
        return b.append('"').toString();
    }

    static String rowsJson(List<List<Object>> rows) {
        StringBuilder b = new StringBuilder("[");
        for (int i = 0; i < rows.size(); i++) {
            if (i > 0) b.append(", ");
            b.append('[');
            List<Object> row = rows.get(i);
            for (int j = 0; j < row.size(); j++) {
                if (j > 0) b.append(", ");
                b.append(json(row.get(j)));
            }
            b.append(']');
        }
        return b.append(']').toString();
    }

    static void error(String label, SQLException e) {
        String message = e.getMessage() == null ? e.getClass().getName() : e.getMessage().split("\n")[0];
        steps.add("{\"label\": " + json(label) + ", \"error\": {\"sqlstate\": " + json(e.getSQLState())
                  + ", \"message\": " + json(message) + "}}");
    }

    static void ok(String label) {
        steps.add("{\"label\": " + json(label) + ", \"ok\": true}");
    }

    static Object step(String label, Action action) {
        try {
            Object v = action.run();
            if (v instanceof Rows) {
                steps.add("{\"label\": " + json(label) + ", \"rows\": " + rowsJson(((Rows) v).rows) + "}");
            } else if (v instanceof Number) {
                steps.add("{\"label\": " + json(label) + ", \"count\": " + v + "}");
            } else {
                ok(label);
            }
            return v;
        } catch (SQLException e) {
            error(label, e);
            return null;
        }
    }

    static Rows query(PreparedStatement ps) throws SQLException {
        List<List<Object>> rows = new ArrayList<>();
        try (ResultSet rs = ps.executeQuery()) {
            ResultSetMetaData md = rs.getMetaData();
            while (rs.next()) {
                List<Object> row = new ArrayList<>();
                for (int i = 1; i <= md.getColumnCount(); i++) row.add(rs.getObject(i));
                rows.add(row);
            }
        }
        return new Rows(rows);
    }

    static Rows query(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            bind(ps, params);
            return query(ps);
        }
    }

    static int update(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            bind(ps, params);
            return ps.executeUpdate();
        }
    }

    static void bind(PreparedStatement ps, Object... params) throws SQLException {
        for (int i = 0; i < params.length; i++) {
            Object p = params[i];
            if (p == null) ps.setNull(i + 1, Types.BIGINT);
            else if (p instanceof Integer) ps.setInt(i + 1, (Integer) p);
            else if (p instanceof Long) ps.setLong(i + 1, (Long) p);
            else if (p instanceof BigDecimal) ps.setBigDecimal(i + 1, (BigDecimal) p);
            else ps.setString(i + 1, p.toString());
        }
    }

    static Long asLong(Object v) { return v == null ? null : ((Number) v).longValue(); }

    public static void main(String[] args) throws Exception {
        int shop = Integer.parseInt(args[0]);
        String tag = args[1];
        int maxCustomer = Integer.parseInt(args[2]);
        String env = System.getenv("PGHOST") + ":" + System.getenv("PGPORT") + "/" + System.getenv("PGDATABASE");
        Properties props = new Properties();
        props.setProperty("user", System.getenv("PGUSER"));
        props.setProperty("password", System.getenv("PGPASSWORD"));
        props.setProperty("sslmode", "disable");
        props.setProperty("ApplicationName", "driver-tier-pgjdbc");
        try (Connection c = DriverManager.getConnection("jdbc:postgresql://" + env, props)) {
            run(c, shop, tag, maxCustomer);
        }
        System.out.println("{\"driver\": \"pgjdbc\", \"shop\": " + shop + ", \"steps\": [" + String.join(", ", steps) + "]}");
    }

    static void run(Connection c, int shop, String tag, int maxCustomer) throws SQLException {
        c.setAutoCommit(true);
        Rows cr = (Rows) step("insert_customer", () -> query(c,
            "INSERT INTO customers (shop_id, name, phone) VALUES (?, ?, ?) RETURNING id", shop, tag + " customer",
            "+49 30 555 0100"));
        Long cid = cr == null ? null : asLong(cr.first());
        Rows rr = (Rows) step("insert_repair", () -> query(c,
            "INSERT INTO repairs (shop_id, customer_id, device_model_id, status, price) VALUES (?, ?, ?, ?, ?) RETURNING id",
            shop, cid == null ? null : cid.intValue(), 3, "received", new BigDecimal("120.00")));
        Long rid = rr == null ? null : asLong(rr.first());
        step("select_repair", () -> query(c, SELECT_REPAIR, rid));
        step("update_status", () -> update(c, "UPDATE repairs SET status = ? WHERE id = ?", "diagnosed", rid));

        // A transaction that begins with an update by id.
        c.setAutoCommit(false);
        step("tx1.update_price", () -> update(c, "UPDATE repairs SET price = price + 1 WHERE id = ?", rid));
        step("tx1.insert_repair", () -> update(c,
            "INSERT INTO repairs (shop_id, customer_id, status) VALUES (?, ?, 'received')", shop,
            cid == null ? null : cid.intValue()));
        step("tx1.commit", () -> { c.commit(); return new Ok(); });
        c.setAutoCommit(true);
        step("tx1.check", () -> query(c, "SELECT count(*) FROM repairs WHERE shop_id = ? AND customer_id = ?", shop,
            cid == null ? null : cid.intValue()));

        // Savepoint, an error inside it, ROLLBACK TO SAVEPOINT, a good update, COMMIT.
        c.setAutoCommit(false);
        step("tx2.update_status", () -> update(c, "UPDATE repairs SET status = 'diagnosed' WHERE id = ?", rid));
        Savepoint[] sp = new Savepoint[1];
        step("tx2.savepoint", () -> { sp[0] = c.setSavepoint(); return new Ok(); });
        step("tx2.duplicate_user", () -> update(c,
            "INSERT INTO users (shop_id, email, role) VALUES (?, ?, 'staff')", shop, "owner" + shop + "@example.test"));
        step("tx2.rollback_to_savepoint", () -> { c.rollback(sp[0]); return new Ok(); });
        step("tx2.update_price", () -> update(c, "UPDATE repairs SET price = ? WHERE id = ?", new BigDecimal("99.50"), rid));
        step("tx2.commit", () -> { c.commit(); return new Ok(); });
        c.setAutoCommit(true);
        step("tx2.check", () -> query(c, "SELECT status, price FROM repairs WHERE id = ?", rid));

        // An error without a savepoint: 25P02 on the next statement, then rollback().
        c.setAutoCommit(false);
        step("tx3.insert_customer", () -> update(c,
            "INSERT INTO customers (shop_id, name, phone) VALUES (?, ?, NULL)", shop, tag + " rolled back"));
        step("tx3.bad_repair", () -> update(c,
            "INSERT INTO repairs (shop_id, customer_id, status) VALUES (?, ?, 'received')", shop, MISSING_CUSTOMER));
        step("tx3.after_error", () -> query(c, "SELECT count(*) FROM customers WHERE shop_id = ?", shop));
        step("tx3.rollback", () -> { c.rollback(); return new Ok(); });
        c.setAutoCommit(true);
        step("tx3.check", () -> query(c, "SELECT count(*) FROM customers WHERE shop_id = ? AND name = ?", shop,
            tag + " rolled back"));

        step("executemany", () -> {
            try (PreparedStatement ps = c.prepareStatement(
                    "INSERT INTO customers (shop_id, name, phone) VALUES (?, ?, ?)")) {
                for (int n = 1; n <= 5; n++) {
                    ps.setInt(1, shop);
                    ps.setString(2, tag + " batch " + n);
                    ps.setString(3, "+49 30 555 02" + (n - 1));
                    ps.addBatch();
                }
                ps.executeBatch();
            }
            return new Ok();
        });
        step("executemany.check", () -> query(c,
            "SELECT count(*) FROM customers WHERE shop_id = ? AND name LIKE ?", shop, tag + " batch %"));
        try (PreparedStatement ps = c.prepareStatement(
                "SELECT id, name, phone FROM customers WHERE shop_id = ? AND name = ?")) {
            ps.unwrap(PGStatement.class).setPrepareThreshold(1);  // named, server-side from the first execution
            for (int n = 1; n <= 3; n++) {
                final int k = n;
                step("prepared." + n, () -> { bind(ps, shop, tag + " batch " + k); return query(ps); });
            }
        } catch (SQLException e) {
            error("prepared.1", e);
        }

        step("fk_join", () -> query(c, "SELECT r.id, c.name FROM repairs r JOIN customers c ON c.id = r.customer_id"
            + " WHERE r.shop_id = ? ORDER BY r.id LIMIT 20", shop));
        step("global_join", () -> query(c, "SELECT r.id, d.brand, d.model FROM repairs r"
            + " JOIN device_models d ON d.id = r.device_model_id WHERE r.shop_id = ? ORDER BY r.id DESC LIMIT 3", shop));
        // Every shop: the sample's customers per shop (a read no shop id narrows).
        step("all_shops", () -> query(c, "SELECT s.id, s.name, count(c.id) FROM shops s JOIN customers c ON c.shop_id = s.id"
            + " WHERE c.id <= ? GROUP BY s.id, s.name ORDER BY s.id", maxCustomer));

        CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
        step("copy_in", () -> {
            StringBuilder csv = new StringBuilder();
            for (int n = 1; n <= 20; n++) csv.append(shop).append(",\"").append(tag).append(String.format(" copy %02d", n))
                .append("\",\n");
            try {
                return copy.copyIn("COPY customers (shop_id, name, phone) FROM STDIN (FORMAT csv)",
                                   new StringReader(csv.toString()));
            } catch (java.io.IOException e) {
                throw new SQLException(e);
            }
        });
        step("copy_out", () -> {
            StringWriter out = new StringWriter();
            try {
                copy.copyOut("COPY (SELECT id, name FROM customers WHERE shop_id = " + shop
                             + " ORDER BY id) TO STDOUT (FORMAT csv)", out);
            } catch (java.io.IOException e) {
                throw new SQLException(e);
            }
            List<List<Object>> rows = new ArrayList<>();
            for (String line : out.toString().split("\n")) {
                if (line.isEmpty()) continue;
                int comma = line.indexOf(',');
                String name = line.substring(comma + 1);
                if (name.startsWith("\"")) name = name.substring(1, name.length() - 1).replace("\"\"", "\"");
                List<Object> row = new ArrayList<>();
                row.add(Long.parseLong(line.substring(0, comma)));
                row.add(name);
                rows.add(row);
            }
            return new Rows(rows);
        });
        step("delete_repair", () -> update(c, "DELETE FROM repairs WHERE id = ?", rid));
        step("select_deleted", () -> query(c, SELECT_REPAIR, rid));
    }
}
