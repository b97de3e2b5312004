#!/usr/bin/env node
// Streams autoglm.v1.GenerationService/GenerateStream and writes the text to stdout as it arrives; the finish
// reason and token counts go to stderr. The contract is loaded at run time from the repository's proto/ (no
// generated code):
//
//   node generate-stream.js --target 127.0.0.1:50051 --prompt "Hello" --max-new-tokens 32
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');

function loadContract() {
  const definition = protoLoader.loadSync('autoglm/v1/generation.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the proto (snake_case)
    longs: String, // uint64 seed as a string, as protobuf's JSON mapping does
    enums: String, // FINISH_REASON_... names
    defaults: false,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).autoglm.v1;
}

function main() {
  const { values } = parseArgs({
    options: {
      target: { type: 'string', default: '127.0.0.1:50051' },
      prompt: { type: 'string', default: 'Hello' },
      'max-new-tokens': { type: 'string', default: '32' },
      temperature: { type: 'string', default: '0' },
      timeout: { type: 'string', default: '60' },
    },
  });
  const autoglm = loadContract();
  // Plaintext to match the server's default; use grpc.credentials.createSsl() for a TLS server.
  const client = new autoglm.GenerationService(values.target, grpc.credentials.createInsecure());
  const request = {
    prompt: values.prompt,
    sampling: { temperature: Number(values.temperature) },
    stopping: { max_new_tokens: Number(values['max-new-tokens']) },
  };
  const deadline = new Date(Date.now() + Number(values.timeout) * 1000);
  const call = client.GenerateStream(request, { deadline });
  call.on('data', (message) => {
    process.stdout.write(message.text || '');
    if (message.finish_reason && message.finish_reason !== 'FINISH_REASON_UNSPECIFIED') {
      const usage = message.usage || {};
      process.stderr.write(
        `\n[${message.finish_reason}: ${usage.prompt_tokens} prompt + ${usage.completion_tokens} generated tokens]\n`,
      );
    }
  });
  call.on('error', (error) => {
    process.stderr.write(`generate-stream: ${grpc.status[error.code]}: ${error.details}\n`);
    process.exitCode = 1;
    client.close();
  });
  call.on('end', () => client.close());
}

main();
