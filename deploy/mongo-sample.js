// Sample data for the compose stack's `catalog` MongoDB database.
const catalog = db.getSiblingDB("catalog");
catalog.products.insertMany(
  Array.from({ length: 500 }, (_, i) => ({
    sku: `SKU-${i}`,
    name: `Product ${i}`,
    price: NumberDecimal(((i % 90) + 9.99).toFixed(2)),
    tags: ["sample", i % 2 === 0 ? "even" : "odd"],
    added: new Date(Date.UTC(2026, 0, 1 + (i % 28))),
  }))
);
catalog.products.createIndex({ sku: 1 }, { unique: true });
catalog.reviews.insertMany([
  { sku: "SKU-1", stars: 5, text: "Sturdy." },
  { sku: "SKU-2", stars: 3, text: "Fine, ünicode ✓" },
]);
