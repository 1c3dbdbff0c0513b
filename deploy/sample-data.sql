-- Sample data for the compose stack's `shop` database.
CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id bigint REFERENCES customers (id),
    total numeric(10, 2) NOT NULL,
    placed timestamptz NOT NULL DEFAULT now()
);
INSERT INTO customers (name, email)
SELECT 'customer ' || g, 'customer' || g || '@example.com' FROM generate_series(1, 1000) g;
INSERT INTO orders (customer_id, total, placed)
SELECT 1 + g % 1000, (g % 400) * 2.5, now() - g * interval '10 minutes' FROM generate_series(1, 20000) g;
