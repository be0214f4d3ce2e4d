// Renders Ollama TEMPLATEs the way Ollama's server calls them for a chat (ollama/ollama template/template.go:
// Parse, Execute, collate, read 2026-12-02): Go's
// text/template with missingkey=zero and a `json` function, given .System (the system messages joined by a blank
// line), .Messages (consecutive messages of one role merged, tool messages kept apart), .Tools and .Response.
// Reads [{"template": ..., "messages": [{"role", "content"}]}] on stdin, writes the rendered texts as JSON.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Case struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
}

func render(c Case) string {
	var system []string
	var messages []*Message
	for i := range c.Messages {
		m := &c.Messages[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(messages); n > 0 && messages[n-1].Role == m.Role && m.Role != "tool" {
			messages[n-1].Content += "\n\n" + m.Content
		} else {
			messages = append(messages, m)
		}
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	t, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(c.Template)
	if err != nil {
		return "ERROR: " + err.Error()
	}
	var b strings.Builder
	values := map[string]any{"System": strings.Join(system, "\n\n"), "Messages": messages, "Tools": nil, "Response": ""}
	if err := t.Execute(&b, values); err != nil {
		return "ERROR: " + err.Error()
	}
	return b.String()
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	out := make([]string, len(cases))
	for i, c := range cases {
		out[i] = render(c)
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
