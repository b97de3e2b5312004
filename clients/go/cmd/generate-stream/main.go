// Command generate-stream streams autoglm.v1.GenerationService/GenerateStream and writes the text to stdout as
// it arrives; the finish reason and token counts go to stderr.
//
//	generate-stream --target 127.0.0.1:50051 --prompt "Hello" --max-new-tokens 32
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	autoglmv1 "autoglm-rpc-client/autoglmv1"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "host:port of the server")
	prompt := flag.String("prompt", "Hello", "the prompt text")
	maxNewTokens := flag.Uint("max-new-tokens", 32, "the most tokens to generate")
	temperature := flag.Float64("temperature", 0, "0: greedy")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline of the call")
	flag.Parse()
	if err := run(*target, *prompt, uint32(*maxNewTokens), float32(*temperature), *timeout); err != nil {
		fmt.Fprintf(os.Stderr, "generate-stream: %v\n", err)
		os.Exit(1)
	}
}

func run(target, prompt string, maxNewTokens uint32, temperature float32, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Plaintext to match the server's default; use grpc.WithTransportCredentials for a TLS server.
	conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return fmt.Errorf("connect %s: %w", target, err)
	}
	defer conn.Close()

	request := &autoglmv1.GenerateStreamRequest{
		Input:    &autoglmv1.GenerateStreamRequest_Prompt{Prompt: prompt},
		Sampling: &autoglmv1.SamplingOptions{Temperature: &temperature},
		Stopping: &autoglmv1.StopOptions{MaxNewTokens: &maxNewTokens},
	}
	stream, err := autoglmv1.NewGenerationServiceClient(conn).GenerateStream(ctx, request)
	if err != nil {
		return err
	}
	for {
		message, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			s := status.Convert(err)
			return fmt.Errorf("%s: %s", s.Code(), s.Message())
		}
		fmt.Print(message.GetText())
		if message.GetFinishReason() != autoglmv1.FinishReason_FINISH_REASON_UNSPECIFIED {
			usage := message.GetUsage()
			fmt.Fprintf(os.Stderr, "\n[%s: %d prompt + %d generated tokens]\n",
				message.GetFinishReason(), usage.GetPromptTokens(), usage.GetCompletionTokens())
		}
	}
}
