// Starts @vercel/cosmosdb-server for the repository contract tests, with two mends:
//
// 1. Reading a missing document answers 404, as Cosmos DB does. The stock handler indexes into an undefined
//    document and answers 500; we answer from the server's own read operation when it finds nothing, and
//    leave every other read to the stock handler. The adapter is not bent: it reads with `read_item` and
//    treats 404 as "not found", exactly as against real Cosmos DB.
// 2. A read with If-None-Match naming the document's current ETag answers 304 without the document, as
//    Cosmos DB does (the stock handler ignores the header); the order watch reads this way.
// 3. Keep-alive: the CLI closes the connection after every response (~40 ms per HTTPS call).
//
// Usage: node launch.js [--no-ssl] [--host 127.0.0.1] [--port 0]. Prints one line "listening <url>" when
// ready (port 0 picks a free port); stops on SIGTERM/SIGINT.
"use strict";

const lib = (name) => require(`@vercel/cosmosdb-server/lib/${name}`);

function answerMissingAndUnmodifiedDocuments() {
  const readDocument = lib("handler/read-document");
  const { readOperation } = lib("handler/_document-operations");
  const partitionHeader = lib("utils/get-partition-from-header").default;
  const stockHandler = readDocument.default;

  // Replaced before `lib/routes` is loaded, so the route table captures this handler.
  readDocument.default = (account, req, res, params) => {
    const collection = account.database(params.dbId).collection(params.collId);
    const partitionKey = partitionHeader(req);
    if (collection.read() && partitionKey !== undefined) {
      const lookup = readOperation(collection, { partitionKey, id: params.docId });
      if (lookup.statusCode === 404) {
        res.statusCode = 404;
        return lookup.body;
      }
      if (req.headers["if-none-match"] && req.headers["if-none-match"] === lookup.body._etag) {
        res.statusCode = 304;
        return {};
      }
    }
    return stockHandler(account, req, res, params);
  };
}

function parseArguments(argv) {
  const options = { ssl: true, host: "127.0.0.1", port: 0 };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === "--no-ssl") options.ssl = false;
    else if (argv[i] === "--host") options.host = argv[++i];
    else if (argv[i] === "--port") options.port = Number(argv[++i]);
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  return options;
}

function main() {
  const options = parseArguments(process.argv.slice(2));
  answerMissingAndUnmodifiedDocuments();
  const { createHttpServer, createHttpsServer } = require("@vercel/cosmosdb-server");
  const create = options.ssl ? createHttpsServer : createHttpServer;
  const server = create({ keepAlive: true });
  // Longer than the client's idle keep-alive (aiohttp: 15 s), so the server never closes a connection the
  // client is about to reuse.
  server.keepAliveTimeout = 65_000;
  server.listen(options.port, options.host, () => {
    const scheme = options.ssl ? "https" : "http";
    console.log(`listening ${scheme}://${options.host}:${server.address().port}/`);
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main();
