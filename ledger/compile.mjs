// Compiles contracts/AnchorRegistry.sol with solc-js and prints {contract, compiler, abi, bytecode}
// as JSON on stdout. `python -m ledger.compile` writes it to contracts/AnchorRegistry.json.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = dirname(fileURLToPath(import.meta.url));
const name = "AnchorRegistry";
const source = readFileSync(join(here, "contracts", `${name}.sol`), "utf8");
const input = {
  language: "Solidity",
  sources: { [`${name}.sol`]: { content: source } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    metadata: { bytecodeHash: "none" },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) console.error(e.formattedMessage);
  process.exit(1);
}
const contract = output.contracts[`${name}.sol`][name];
process.stdout.write(
  JSON.stringify(
    {
      contract: name,
      compiler: `solc-js ${solc.version()}`,
      settings: input.settings,
      abi: contract.abi,
      bytecode: `0x${contract.evm.bytecode.object}`,
    },
    null,
    2,
  ) + "\n",
);
