// Runs the GraphQL-over-HTTP audit of graphql-http (`serverAudits`) against one endpoint and prints its
// results as one JSON array: [{"id", "name", "status", "reason"?}], where status is "ok", or for a failed
// audit "notice" (a MAY), "warn" (a SHOULD) or "error" (a MUST).
//
// Usage: node audit.js http://127.0.0.1:<port>/graphql
"use strict";

const { serverAudits } = require("graphql-http");

async function main(url) {
  const results = [];
  for (const audit of serverAudits({ url })) {  // one at a time: the order of the log is the order of the audits
    const { id, name, status, reason } = await audit.fn();
    results.push({ id, name, status, ...(reason === undefined ? {} : { reason }) });
  }
  process.stdout.write(JSON.stringify(results));
}

main(process.argv[2]).catch((error) => {
  console.error(error);
  process.exit(1);
});
