package cmd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/template"

	"github.com/urfave/cli/v3"
)

// Every listing goes through this file: a fixed-width table (the original
// README's layout), indented JSON, or a Go template run once per item.

// formatFlag is the --format flag shared by listings.
func formatFlag(def string) *cli.StringFlag {
	return &cli.StringFlag{
		Name:  "format",
		Usage: "output `FORMAT`: table, json, or a Go template such as '{{.Name}}'",
		Value: def,
	}
}

// quietFlag is -q, which prints names only.
func quietFlag() *cli.BoolFlag {
	return &cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print names only"}
}

// output is a parsed --format.
type output struct {
	kind string // "table", "json" or "template"
	tmpl *template.Template
}

// parseFormat reads --format before any work, so a typo fails first.
func parseFormat(cmd *cli.Command) (output, error) {
	f := cmd.String("format")
	switch f {
	case "table", "json":
		return output{kind: f}, nil
	}
	if !strings.Contains(f, "{{") {
		return output{}, usageErrorf(cmd, "unknown --format %q: want table, json or a Go template", f)
	}
	t, err := template.New("format").Funcs(template.FuncMap{
		"json": func(v any) (string, error) {
			b, err := marshalJSON(v, "")
			return string(b), err
		},
		"join":  strings.Join,
		"upper": strings.ToUpper,
		"lower": strings.ToLower,
	}).Parse(f)
	if err != nil {
		return output{}, usageErrorf(cmd, "--format: %v", err)
	}
	return output{kind: "template", tmpl: t}, nil
}

// column is a table column: a header and a cell width. The last column has
// no width; cells are padded to the width and always keep one space between.
type column struct {
	name  string
	width int
}

// table prints items of one type. row gives the cells; details (optional)
// gives indented lines printed under the row.
type table[T any] struct {
	columns []column
	row     func(T) []string
	details func(T) []string
}

func (t table[T]) write(w io.Writer, items []T) error {
	var b bytes.Buffer
	header := make([]string, len(t.columns))
	for i, c := range t.columns {
		header[i] = c.name
	}
	t.line(&b, header)
	for _, it := range items {
		t.line(&b, t.row(it))
		if t.details != nil {
			for _, d := range t.details(it) {
				b.WriteString(d)
				b.WriteByte('\n')
			}
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

func (t table[T]) line(b *bytes.Buffer, cells []string) {
	var l strings.Builder
	for i, c := range cells {
		l.WriteString(c)
		if i == len(cells)-1 {
			break
		}
		pad := 1
		if i < len(t.columns) && t.columns[i].width > len(c) {
			pad = t.columns[i].width - len(c)
		}
		l.WriteString(strings.Repeat(" ", pad))
	}
	b.WriteString(strings.TrimRight(l.String(), " "))
	b.WriteByte('\n')
}

// printList prints a listing: the table, a JSON array (`[]` when empty), or
// the template once per item, each followed by a newline.
func printList[T any](w io.Writer, out output, items []T, t table[T]) error {
	switch out.kind {
	case "json":
		if items == nil {
			items = []T{}
		}
		return writeJSON(w, items)
	case "template":
		return writeTemplate(w, out.tmpl, items)
	}
	return t.write(w, items)
}

// printOne prints one object: JSON, the template, or whatever table does.
func printOne[T any](w io.Writer, out output, item T, table func(io.Writer, T) error) error {
	switch out.kind {
	case "json":
		return writeJSON(w, item)
	case "template":
		return writeTemplate(w, out.tmpl, []T{item})
	}
	return table(w, item)
}

func writeTemplate[T any](w io.Writer, t *template.Template, items []T) error {
	var b bytes.Buffer
	for _, it := range items {
		if err := t.Execute(&b, it); err != nil {
			return fmt.Errorf("--format: %w", err)
		}
		b.WriteByte('\n')
	}
	_, err := w.Write(b.Bytes())
	return err
}

// writeJSON writes v indented, without HTML escaping, and a final newline.
func writeJSON(w io.Writer, v any) error {
	b, err := marshalJSON(v, "    ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func marshalJSON(v any, indent string) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if indent != "" {
		enc.SetIndent("", indent)
	}
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// dash shows an unset value in a table.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
