-- Rows for shops 1..20 (ids are predictable: branch id = shop, tellers 5 per shop, accounts 50 per shop).
INSERT INTO branches (shop_id, name, plan_id) SELECT s, 'branch ' || s, 1 + s % 2 FROM generate_series(1, 20) s;
INSERT INTO tellers (shop_id, branch_id) SELECT s, s FROM generate_series(1, 20) s, generate_series(1, 5) t ORDER BY s, t;
INSERT INTO accounts (shop_id, branch_id, balance, labels)
    SELECT s, s, a * 10, ARRAY['seed', 'a' || a] FROM generate_series(1, 20) s, generate_series(1, 50) a ORDER BY s, a;
INSERT INTO categories (shop_id, name) SELECT s, 'root' FROM generate_series(1, 20) s;
